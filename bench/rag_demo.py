"""The demo with retrieval (issue 18): train the demo's tiny model to answer from retrieved passages,
then ask it about the 10 diseases SFT never saw, without and with the knowledge-base index.

Run::

    PYTHONPATH=src:. nice -n 10 python bench/rag_demo.py --out runs/rag-demo            # ~15 min, 2 CPU
    PYTHONPATH=src:. python bench/rag_demo.py --out runs/rag-demo --append               # + BENCHMARKS.md

Steps: the demo's data and knowledge base (``medtune.demo.rag``), a tiny base model whose tokenizer
learns the corpus and the retrieval prompt's wording, PT with the demo's settings, SFT on plain +
passage-augmented + counterfactual-passage questions (seen diseases only), then ``medtune eval rag``
on the unseen diseases and on the held-out phrasing of the seen ones. The same evaluation is a
command: ``medtune eval rag --index OUT/kb-index --data OUT/data/unseen.jsonl --model OUT/sft``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SFT_MAX_LENGTH = 256  # three passages (~25 tokens each), the prompt's wording and the question fit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/rag-demo")
    parser.add_argument("--k", type=int, default=2, help="passages per question (default 2)")
    parser.add_argument("--pt", help="reuse the PT model of an earlier run's OUT/pt (same seed, so the same "
                                     "corpus and tokenizer) instead of training it again")
    parser.add_argument("--sft-epochs", type=int, default=4)
    parser.add_argument("--append", action="store_true", help="append the result to BENCHMARKS.md")
    args = parser.parse_args()
    from medtune.cli.commands import configure_logging

    configure_logging(quiet=True, verbose=False)
    started, out = time.time(), Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    report = run(out, args.k, args.sft_epochs, args.pt)
    report["wall_time_s"] = round(time.time() - started, 1)
    (out / "rag_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    table = render(report)
    print(table)
    if args.append:
        with open(ROOT / "BENCHMARKS.md", "a", encoding="utf-8") as f:
            f.write("\n" + table + "\n")
    return 0


def run(out: Path, k: int, sft_epochs: int, pt: str | None = None) -> dict:
    from medtune.config import pipeline_from_dict
    from medtune.demo.rag import write_rag_demo_data
    from medtune.demo.run import demo_config
    from medtune.evaluation.rag_eval import evaluate_rag, read_questions
    from medtune.inference.chat import ChatModel
    from medtune.inference.rag import PROMPT, Retriever
    from medtune.models.tiny import TinySpec, build_tiny
    from medtune.recipes.run import run_stage

    cfg = demo_config()
    made = write_rag_demo_data(out, seed=cfg["seed"], k=k)
    paths = made["paths"]
    stages = cfg["stages"]
    if pt:  # SFT starts from the given PT model
        base, stages = Path(pt), stages[1:]
    else:
        base = build_tiny(out / "base", TinySpec(**cfg["tiny"]), made["corpus"] + [PROMPT["zh"]])
        stages[0]["data"]["train"] = [paths["corpus"]]
    stages[-1]["data"]["train"] = [paths["sft"]]
    stages[-1]["data"]["max_length"] = SFT_MAX_LENGTH
    stages[-1]["train"]["epochs"] = sft_epochs
    pipeline = pipeline_from_dict({"base": {"path": str(base), "device": "cpu"}, "output": str(out),
                                   "stages": stages}, "rag demo pipeline")
    timings = {}
    for stage in pipeline:
        result = run_stage(stage, quiet=True)
        timings[stage.name] = result.metrics.get("train_runtime_s")
    bot = ChatModel.load(out / "sft", device="cpu")
    retriever = Retriever.load(out / "kb-index", k=k)
    report = {"counts": made["counts"], "k": k, "sft_epochs": sft_epochs, "train_runtime_s": timings,
              "pt_reused": pt}
    for name in ("unseen", "heldout"):
        result = evaluate_rag(retriever, read_questions(paths[name], need_answers=True), bot=bot, k=k)
        report[name] = result["scores"]
        with open(out / f"eval-{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in result["rows"])
        report[f"{name}_examples"] = result["rows"][:2]
    return report


def render(report: dict) -> str:
    k = report["k"]
    rows = [f"| {name} diseases ({report[name]['n']} questions) | {report[name]['hit@1']:.1%} | "
            f"{report[name][f'hit@{k}']:.1%} | {report[name]['accuracy_without_retrieval']:.1%} | "
            f"{report[name]['accuracy_with_retrieval']:.1%} |" for name in ("unseen", "heldout")]
    return "\n".join([
        f"### RAG demo: answers from retrieved passages ({time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"{report['wall_time_s']:.0f} s wall)",
        "",
        "`PYTHONPATH=src:. python bench/rag_demo.py --out runs/rag-demo` (tiny llama 128x4, PT then SFT on "
        f"{report['counts']['sft_plain']} plain + {report['counts']['sft_with_passages']} passage-augmented "
        f"questions of the seen diseases, {report['sft_epochs']} epochs; BM25 top-{k})",
        "",
        f"| question set | hit@1 | hit@{k} | accuracy without retrieval | accuracy with retrieval |",
        "|---|---|---|---|---|",
        *rows,
    ])


if __name__ == "__main__":
    sys.exit(main())
