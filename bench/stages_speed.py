"""Offline preference stages (rm, dpo, orpo, simpo, kto): medtune vs plain TRL, and medtune's DPO
with a precomputed vs a live reference. Same model, records, batch size and steps on both sides.

Run (CPU, ~5 minutes on 2 cores)::

    python bench/stages_speed.py                # 200 records, 10 steps a run; appends to BENCHMARKS.md
    python bench/stages_speed.py --quick --no-append   # 40 records, 3 steps (~3 minutes)
    python bench/stages_speed.py --repeat 2     # each run twice, the faster kept (busy machines)

Model: a tiny Llama (hidden 128, 4 layers, vocab 4000, tokenizer trained on the records). Records:
the 100 medical pairs of ../shared/data/medicalgpt/reward/test.json then the general pairs of
dpo_zh_500.jsonl (or the bundled sample file repeated when ../shared/data is absent), rendered
with the same chatml template. LoRA r8 on all linear layers, cutoff 256 tokens, batch 8 pairs (KTO:
8 unpaired examples, from the same pairs), lr 5e-5 linear, fp32 on CPU, no gradient checkpointing;
TRL: RewardTrainer, DPOTrainer, trl.experimental ORPOTrainer and CPOTrainer(loss_type="simpo",
cpo_alpha=0), KTOTrainer, with the reference precomputed where medtune's default does so.
Each run is its own process, so peak RSS is per run (it includes ~0.5 GB of imported libraries).
Tokens/s counts the trained sequences (chosen + rejected) of the medtune tokenization; the ratio
is TRL train time / medtune train time (> 1: medtune faster). Process s is load + tokenize (+ the
reference pass) + train + save.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import publish, section_header

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
REWARD = ROOT.parent / "shared" / "data" / "medicalgpt" / "reward"
SOURCES = [REWARD / "test.json", REWARD / "dpo_zh_500.jsonl"]
SAMPLE = ROOT / "src" / "medtune" / "assets" / "sample" / "preference.jsonl"
HP = {"max_length": 256, "batch_size": 8, "lr": 5e-5, "rank": 8, "alpha": 16}
STAGES = ("rm", "dpo", "orpo", "simpo", "kto")


def write_records(n: int, out: Path) -> tuple[Path, str]:
    """Write ``n`` preference records as ``{prompt, chosen, rejected}`` message lists; return (path, source)."""
    from medtune.data.readers.files import read_file

    shared = all(p.is_file() for p in SOURCES)
    records = [r for p in (SOURCES if shared else [SAMPLE]) for r in read_file(str(p)).records]
    records = (records * (n // len(records) + 1))[:n]
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return out, ("MedicalGPT reward test.json + dpo_zh_500" if shared else "bundled sample, repeated")


def build_model(work: Path, data: Path) -> Path:
    from medtune.data.readers.files import read_file
    from medtune.models.tiny import TinySpec, build_tiny

    records = read_file(str(data)).records
    texts = [m["content"] for r in records for k in ("prompt", "chosen", "rejected") for m in r[k]]
    return build_tiny(work / "tiny", TinySpec(hidden=128, layers=4, heads=4, kv_heads=2, vocab_size=4000), texts)


def pair_tokens(model: Path, data: Path) -> float:
    """Return the mean tokens of a pair (chosen + rejected sequences) after medtune's tokenization."""
    from medtune.config import stage_from_dict
    from medtune.data.readers.files import read_file
    from medtune.data.tokenize.examples import TokenStats
    from medtune.models.load import load_tokenizer
    from medtune.recipes.preference import make_pair_examples

    cfg = stage_from_dict({"stage": "dpo", "model": {"path": str(model)}, "data": {"train": [str(data)],
                           "max_length": HP["max_length"]}, "output": "unused"}, "bench")
    rows = make_pair_examples(cfg, load_tokenizer(str(model)), read_file(str(data)).records, TokenStats())
    return sum(len(r["chosen_input_ids"]) + len(r["rejected_input_ids"]) for r in rows) / len(rows)


# --- one run per process --------------------------------------------------------------------


def run_medtune(stage: str, method: str, reference: str, model: Path, data: Path, out: Path, steps: int) -> dict:
    from medtune.config import stage_from_dict
    from medtune.recipes.run import run_stage

    adapter = {"method": "full"}
    if method == "lora":
        adapter = {"method": "lora", "rank": HP["rank"], "alpha": HP["alpha"]}
    raw = {"stage": stage, "model": {"path": str(model), "device": "cpu", "dtype": "float32"},
           "data": {"train": [str(data)], "max_length": HP["max_length"]}, "adapter": adapter,
           "train": {"max_steps": steps, "batch_size": HP["batch_size"], "learning_rate": HP["lr"],
                     "lr_scheduler": "linear", "logging_steps": 5, "save_steps": -1}, "output": str(out)}
    if stage in ("dpo", "kto"):
        raw["preference"] = {"reference": reference}
    start = time.perf_counter()
    result = run_stage(stage_from_dict(raw, "bench"), quiet=True)
    return {"train_s": result.metrics["train_runtime_s"], "total_s": time.perf_counter() - start,
            "loss": result.metrics["train_loss"]}


def trl_trainer(stage: str, model_dir: Path, data: Path, out: Path, steps: int):
    """Return the plain TRL trainer for ``stage`` on the same model, records and hyper-parameters."""
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    pairs = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    common = {"output_dir": str(out), "per_device_train_batch_size": HP["batch_size"], "max_steps": steps,
              "learning_rate": HP["lr"], "lr_scheduler_type": "linear", "use_cpu": True, "bf16": False,
              "gradient_checkpointing": False, "report_to": [], "logging_steps": 5, "save_strategy": "no",
              "disable_tqdm": True, "seed": 42, "max_length": HP["max_length"]}
    lora = {"r": HP["rank"], "lora_alpha": HP["alpha"], "target_modules": "all-linear"}
    if stage == "rm":
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype="float32")
        return trl.RewardTrainer(model=model, args=trl.RewardConfig(**common),
                                 train_dataset=Dataset.from_list(pairs), processing_class=tok,
                                 peft_config=LoraConfig(task_type="SEQ_CLS", **lora))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    peft = LoraConfig(task_type="CAUSAL_LM", **lora)
    if stage == "kto":
        unpaired = [{"prompt": p["prompt"], "completion": p[k], "label": k == "chosen"}
                    for k in ("chosen", "rejected") for p in pairs]
        args = trl.KTOConfig(**common, beta=0.1, precompute_ref_log_probs=True)
        return trl.KTOTrainer(model=model, args=args, train_dataset=Dataset.from_list(unpaired),
                              processing_class=tok, peft_config=peft)
    cls, args = {
        "dpo": (trl.DPOTrainer, lambda: trl.DPOConfig(**common, beta=0.1, precompute_ref_log_probs=True)),
        "orpo": (ORPOTrainer, lambda: ORPOConfig(**common, beta=0.1)),
        "simpo": (CPOTrainer, lambda: CPOConfig(**common, loss_type="simpo", cpo_alpha=0.0, beta=2.0,
                                                simpo_gamma=0.5)),
    }[stage]
    return cls(model=model, args=args(), train_dataset=Dataset.from_list(pairs), processing_class=tok,
               peft_config=peft)


def run_trl(stage: str, model_dir: Path, data: Path, out: Path, steps: int) -> dict:
    start = time.perf_counter()
    trainer = trl_trainer(stage, model_dir, data, out, steps)
    result = trainer.train()
    trainer.save_model(str(out))
    return {"train_s": result.metrics["train_runtime"], "total_s": time.perf_counter() - start,
            "loss": result.training_loss}


def child(spec: str, work: Path, steps: int) -> None:
    """Run one spec (``runner:stage:method:reference``) and print its result as one JSON line."""
    runner, stage, method, reference = spec.split(":")
    os.environ["MEDTUNE_CACHE"] = tempfile.mkdtemp(dir=work)  # every run tokenizes for itself
    out = Path(tempfile.mkdtemp(dir=work)) / "out"
    if runner == "trl":
        result = run_trl(stage, work / "tiny", work / "pairs.jsonl", out, steps)
    else:
        result = run_medtune(stage, method, reference, work / "tiny", work / "pairs.jsonl", out, steps)
    result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def measure(spec: str, work: Path, steps: int, repeat: int = 1) -> dict:
    """Run ``spec`` in a fresh process ``repeat`` times; return the run with the shortest train time."""
    cmd = [sys.executable, __file__, "--child", spec, "--work", str(work), "--steps", str(steps)]
    results = []
    for _ in range(repeat):
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.exit(f"{spec} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(lines[-1][len("RESULT "):]))
    print(f"  {spec}: done", file=sys.stderr)
    return min(results, key=lambda r: r["train_s"])


# --- report ---------------------------------------------------------------------------------


def row(name: str, r: dict, tokens: float) -> str:
    return (f"| {name} | {r['train_s']:.1f} | {r['total_s']:.1f} | {tokens / r['train_s']:.0f} | "
            f"{r['rss_mb']:.0f} | {r['loss']:.4f} |")


HEADER = ["| run | train s | process s | tokens/s | peak RSS MB | train loss |", "|---|---|---|---|---|---|"]


def reference_table(runs: dict, tokens: float) -> str:
    lines = list(HEADER)
    for method in ("lora", "full"):
        for reference in ("precomputed", "live"):
            lines.append(row(f"medtune dpo {method}, reference {reference}", runs[(method, reference)], tokens))
    return "\n".join(lines)


def stages_table(pairs: dict, tokens: dict) -> str:
    lines = [HEADER[0] + " TRL / medtune train time |", HEADER[1] + "---|"]
    for stage, (theirs, ours) in pairs.items():
        ratio = f" {theirs['train_s'] / ours['train_s']:.2f}× |"
        lines.append(row(f"trl {stage}", theirs, tokens[stage]) + " |")
        lines.append(row(f"medtune {stage}", ours, tokens[stage]) + ratio)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 records, 3 steps a run")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement; the fastest is kept")
    parser.add_argument("--no-append", action="store_true", help="do not append to BENCHMARKS.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.work), args.steps)
        return 0

    n_records, steps = (40, 3) if args.quick else (200, 10)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data, source = write_records(n_records, work / "pairs.jsonl")
        per_pair = pair_tokens(build_model(work, data), data)
        tokens = {s: per_pair * HP["batch_size"] * steps / (2 if s == "kto" else 1) for s in STAGES}
        n = args.repeat
        refs = {(m, r): measure(f"medtune:dpo:{m}:{r}", work, steps, n) for m in ("lora", "full")
                for r in ("precomputed", "live")}
        ours = {s: measure(f"medtune:{s}:lora:precomputed", work, steps, n) for s in STAGES if s != "dpo"}
        ours["dpo"] = refs[("lora", "precomputed")]
        pairs = {s: (measure(f"trl:{s}:lora:-", work, steps, n), ours[s]) for s in STAGES}
    report = (section_header("stages_speed") + ": tiny Llama (hidden 128, 4 layers, vocab "
              f"4000), {n_records} pairs ({source}, {per_pair:.0f} tokens a pair), LoRA r8 all-linear unless "
              f"noted, cutoff {HP['max_length']}, batch {HP['batch_size']}, {steps} steps, fp32 CPU.\n\n"
              f"DPO reference: precomputed (one pass before training) vs live (a forward every step)\n\n"
              f"{reference_table(refs, tokens['dpo'])}\n\nmedtune vs TRL, same model, records, batch and steps\n\n"
              f"{stages_table(pairs, tokens)}\n")
    publish(report, append=not args.no_append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
