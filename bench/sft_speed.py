"""SFT (LoRA) speed: medtune vs a plain TRL ``SFTTrainer``, same model, data and hyper-parameters.

Run (CPU, ~2 minutes)::

    python bench/sft_speed.py                       # 1000 HuaTuo records, appends to BENCHMARKS.md
    python bench/sft_speed.py --records 200 --no-append

Both sides: the same tiny Llama (hidden 256, 4 layers), the first N records of
../shared/data/huatuo/llama_data.json rendered with the same chatml template, loss on assistant
tokens only, LoRA r8 on all linear layers, cutoff 512, batch 8, 1 epoch, lr 2e-4, fp32 on CPU.
Real tokens are non-pad input tokens; the ratio is TRL time / medtune time (> 1: medtune faster).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import publish, section_header

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "huatuo" / "llama_data.json"
HP = {"max_length": 512, "batch_size": 8, "epochs": 1, "lr": 2e-4, "rank": 8, "alpha": 16}


def first_records(n: int, out: Path) -> Path:
    """Write the first ``n`` lines of the HuaTuo file (JSONL despite .json) to ``out``."""
    with DATA.open(encoding="utf-8") as src, out.open("w", encoding="utf-8") as dst:
        for i, line in enumerate(src):
            if i >= n:
                break
            dst.write(line)
    return out


def build_model(work: Path, data: Path) -> Path:
    from medtune.data.readers.files import read_file
    from medtune.models.tiny import TinySpec, build_tiny

    texts = [m["content"] for r in read_file(str(data)).records for m in r["messages"]]
    spec = TinySpec(hidden=256, layers=4, heads=8, kv_heads=4, vocab_size=8000)
    return build_tiny(work / "tiny", spec, texts)


def run_medtune(model: Path, data: Path, out: Path, packing: bool = False) -> dict:
    from medtune.config import stage_from_dict
    from medtune.recipes.run import run_stage

    cfg = stage_from_dict({
        "stage": "sft", "model": {"path": str(model), "device": "cpu", "dtype": "float32"},
        "data": {"train": [str(data)], "max_length": HP["max_length"], "packing": packing},
        "adapter": {"method": "lora", "rank": HP["rank"], "alpha": HP["alpha"]},
        "train": {"epochs": HP["epochs"], "batch_size": HP["batch_size"], "learning_rate": HP["lr"],
                  "lr_scheduler": "linear", "logging_steps": 10},
        "output": str(out),
    }, "bench")
    start = time.perf_counter()
    result = run_stage(cfg, quiet=True)
    total = time.perf_counter() - start
    lineage = json.loads((out / "lineage.json").read_text())
    tokens = _input_tokens(model, data)
    return {"train_s": result.metrics["train_runtime_s"], "total_s": total, "tokens": tokens,
            "loss": result.metrics["train_loss"], "label_tokens": lineage["tokenization"]["label_tokens"]}


def _input_tokens(model: Path, data: Path) -> int:
    from medtune.data.readers.files import read_file
    from medtune.data.tokenize.examples import encode_conversations
    from medtune.models.load import load_tokenizer

    tok = load_tokenizer(str(model))
    convs = [r["messages"] for r in read_file(str(data)).records]
    return sum(len(e["input_ids"]) for e in encode_conversations(tok, convs, HP["max_length"]))


def run_trl(model: Path, data: Path, out: Path) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from medtune.data.readers.files import read_file

    start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model)
    records = [{"messages": r["messages"]} for r in read_file(str(data)).records]
    args = SFTConfig(
        output_dir=str(out), max_length=HP["max_length"], per_device_train_batch_size=HP["batch_size"],
        num_train_epochs=HP["epochs"], learning_rate=HP["lr"], lr_scheduler_type="linear",
        assistant_only_loss=True, use_cpu=True, bf16=False, gradient_checkpointing=False,
        report_to=[], logging_steps=10, save_strategy="no", disable_tqdm=True, seed=42,
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model, dtype="float32"), args=args,
        train_dataset=Dataset.from_list(records), processing_class=tok,
        peft_config=LoraConfig(r=HP["rank"], lora_alpha=HP["alpha"], target_modules="all-linear",
                               task_type="CAUSAL_LM"),
    )
    out_metrics = trainer.train()
    total = time.perf_counter() - start
    return {"train_s": out_metrics.metrics["train_runtime"], "total_s": total,
            "loss": out_metrics.training_loss}


def table(rows: dict, tokens: int) -> str:
    lines = ["| runner | train s | process s | real tokens/s | train loss |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['train_s']:.1f} | {r['total_s']:.1f} | "
                     f"{tokens / r['train_s']:.0f} | {r['loss']:.4f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--packing", action="store_true", help="also time medtune with packing")
    parser.add_argument("--no-append", action="store_true", help="do not append to BENCHMARKS.md")
    args = parser.parse_args()
    if not DATA.is_file():
        print(f"skipped: {DATA} not found (needs ../shared/data)", file=sys.stderr)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = first_records(args.records, work / "huatuo.jsonl")
        model = build_model(work, data)
        rows = {"trl SFTTrainer": run_trl(model, data, work / "trl")}
        rows["medtune sft"] = run_medtune(model, data, work / "medtune")
        if args.packing:
            rows["medtune sft (packing)"] = run_medtune(model, data, work / "packed", packing=True)
    tokens = rows["medtune sft"]["tokens"]
    ratio = rows["trl SFTTrainer"]["train_s"] / rows["medtune sft"]["train_s"]
    report = (section_header("sft_speed") + ": tiny Llama (hidden 256, 4 layers, "
              f"vocab 8000), first {args.records} HuaTuo records ({tokens} real tokens), LoRA r8 all-linear, "
              f"cutoff 512, batch 8, 1 epoch, fp32 CPU.\n\n{table(rows, tokens)}\n\n"
              f"**Speed-up (TRL train time / medtune train time): {ratio:.2f}×**\n")
    publish(report, append=not args.no_append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
