"""`medtune plan`'s memory estimate against measured peaks of real CPU training runs.

    python bench/plan_accuracy.py            # ~4 minutes on 2 cores
    python bench/plan_accuracy.py --append   # + BENCHMARKS.md

Two random llama models (~5M and ~80M parameters, untied lm_head, vocabulary 3.8k) train 3 steps of
SFT in fp32 on rows all exactly ``max_length`` tokens (long conversations truncated: no padding),
full fine-tune and LoRA r8 on every linear, with and without gradient checkpointing. Each run is
its own process. Measured: the process's peak resident memory (``ru_maxrss``, the kernel's
high-water mark) minus its resident memory just before ``run_stage`` (torch, transformers, peft,
trl, datasets and medtune imported), with glibc's mmap threshold fixed at 64 KiB so freed tensors
go back to the system at once (``MALLOC_MMAP_THRESHOLD_``); the delta also holds the tokenizer,
the tokenized rows and the trainer's Python objects, which the plan does not count.
Planned: ``medtune.models.memory.estimate`` for the same config, from config.json only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

MODELS = {  # name: TinySpec fields
    "llama-5m": {"hidden": 256, "layers": 4, "heads": 4, "kv_heads": 2, "intermediate": 704},
    "llama-80m": {"hidden": 768, "layers": 12, "heads": 12, "kv_heads": 4, "intermediate": 2048},
}
VOCAB = 4096
CASES = [  # (model, method, batch, length, gradient checkpointing)
    ("llama-5m", "full", 8, 256, False),
    ("llama-5m", "lora", 8, 256, False),
    ("llama-80m", "full", 4, 256, False),
    ("llama-80m", "lora", 4, 256, False),
    ("llama-80m", "full", 4, 256, True),
]


def build_models(work: Path) -> dict:
    from medtune.models.tiny import TinySpec, build_tiny

    paths = {}
    for name, spec in MODELS.items():
        path = work / name
        if not (path / "config.json").is_file():
            build_tiny(path, TinySpec(vocab_size=VOCAB, **spec))
            config = json.loads((path / "config.json").read_text())
            if config.get("tie_word_embeddings"):  # untie: lm_head is its own matrix, as in most 7B+ models
                _untie(path)
        paths[name] = path
    return paths


def _untie(path: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path, safe_serialization=True)


def write_records(path: Path, model_dir: Path, length: int) -> Path:
    """Conversations of about twice ``length`` tokens: every row is truncated to exactly ``length``."""
    from transformers import AutoTokenizer

    from medtune.models.tiny import bundled_text

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok("\n".join(bundled_text()), add_special_tokens=False)["input_ids"]
    rows = []
    for i in range(32):
        start = (i * 997) % max(1, len(ids) - 2 * length)
        text = tok.decode(ids[start:start + 2 * length]).replace("<|", "< |")
        rows.append({"messages": [{"role": "user", "content": text[:40]}, {"role": "assistant", "content": text}]})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def stage(model_dir, data, out, method, batch, length, ckpt) -> dict:
    adapter = {"method": method} if method != "lora" else {"method": "lora", "rank": 8, "alpha": 16}
    return {"stage": "sft", "model": {"path": str(model_dir), "template": "chatml", "device": "cpu",
                                      "dtype": "float32"},
            "data": {"train": [str(data)], "max_length": length, "workers": 1, "packing": "false"},
            "adapter": adapter,
            "train": {"max_steps": 3, "batch_size": batch, "logging_steps": 1, "save_steps": -1,
                      "gradient_checkpointing": ckpt, "report_to": "none", "learning_rate": 1e-4},
            "output": str(out)}


def child(raw: dict) -> None:
    """Train ``raw`` in this process; print the RSS delta of the run in bytes."""
    import resource

    import datasets  # noqa: F401 - imported before the baseline, like everything run_stage needs
    import peft  # noqa: F401
    import psutil
    import torch  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401

    from medtune.config import stage_from_dict
    from medtune.recipes.run import run_stage

    cfg = stage_from_dict(raw, "plan_accuracy")
    base = psutil.Process().memory_info().rss
    run_stage(cfg, overwrite=True, quiet=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"measured": peak - base}))


def planned(raw: dict) -> int:
    from medtune.config import stage_from_dict
    from medtune.models.memory import estimate, read_shape, setting_from_config

    cfg = stage_from_dict(raw, "plan_accuracy")
    return estimate(read_shape(cfg.model.path), setting_from_config(cfg, cuda=False)).allocated


def measure(raw: dict) -> int:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0",
           "PYTHONWARNINGS": "ignore", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(raw)], capture_output=True, text=True,
                          env=env, check=False, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])["measured"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    parser.add_argument("--work", help="folder for the models and runs (default: a temp dir)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return 0
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    work = Path(args.work or tempfile.mkdtemp(prefix="plan-accuracy-"))
    os.environ.setdefault("MEDTUNE_CACHE", str(work / "cache"))
    models = build_models(work)
    from medtune.models.memory import read_shape

    rows = ["| model | parameters | method | batch x length | checkpointing | planned MiB | measured MiB | "
            "planned / measured |", "|---|---:|---|---|---|---:|---:|---:|"]
    ratios = []
    for i, (name, method, batch, length, ckpt) in enumerate(CASES):
        data = write_records(work / f"{name}-{length}.jsonl", models[name], length)
        raw = stage(models[name], data, work / f"run{i}", method, batch, length, ckpt)
        plan, got = planned(raw), measure(raw)
        ratios.append(plan / got)
        params = read_shape(str(models[name])).parameters()
        rows.append(f"| {name} | {params / 1e6:.1f}M | {method} | {batch} x {length} | {'yes' if ckpt else 'no'} | "
                    f"{plan / 2**20:,.0f} | {got / 2**20:,.0f} | {plan / got:.2f} |")
        print(rows[-1], flush=True)
    worst = max(abs(r - 1) for r in ratios)
    text = "\n".join(rows) + f"\n\n- largest deviation: {worst:.0%} (target: within 15%)\n"
    from results import publish, section_header

    publish(section_header("plan_accuracy") + "\n\n" + __doc__.split("\n\n", 2)[2].strip() + "\n\n" + text,
            append=args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
