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
    parser.add_argument("--k", type=int, default=1, help="passages in the prompt (default 1: short prompts "
                                                          "train fast on CPU; hit@1 is 100%% on this knowledge base)")
    parser.add_argument("--frames", type=int, nargs=3, default=[1, 1, 2], metavar=("PLAIN", "REAL", "CF"),
                        help="SFT questions per seen fact: plain, with real passages, with counterfactual ones")
    parser.add_argument("--eval-heldout", type=int, default=40, help="held-out questions evaluated (of 360)")
    parser.add_argument("--pt", help="reuse the PT model of an earlier run's OUT/pt (same seed, so the same "
                                     "corpus and tokenizer) instead of training it again")
    parser.add_argument("--sft-epochs", type=int, default=3)
    parser.add_argument("--append", action="store_true", help="append the result to BENCHMARKS.md")
    args = parser.parse_args()
    from medtune.cli.commands import configure_logging

    configure_logging(quiet=True, verbose=False)
    started, out = time.time(), Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    report = run(out, args)
    report["wall_time_s"] = round(time.time() - started, 1)
    (out / "rag_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    table = render(report)
    print(table)
    if args.append:
        with open(ROOT / "BENCHMARKS.md", "a", encoding="utf-8") as f:
            f.write("\n" + table + "\n")
    return 0


def run(out: Path, args) -> dict:
    from medtune.config import pipeline_from_dict
    from medtune.demo.rag import write_rag_demo_data
    from medtune.demo.run import demo_config
    from medtune.evaluation.rag_eval import evaluate_rag, read_questions
    from medtune.inference.chat import ChatModel
    from medtune.inference.rag import PROMPT, Retriever
    from medtune.models.tiny import TinySpec, build_tiny
    from medtune.recipes.run import run_stage

    cfg, k, sft_epochs, pt = demo_config(), args.k, args.sft_epochs, args.pt
    made = write_rag_demo_data(out, seed=cfg["seed"], k=k, frames=tuple(args.frames))
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
              "pt_reused": pt, "frames": args.frames, "torch": __import__("torch").__version__}
    for name in ("unseen", "heldout"):  # the 10 diseases SFT never saw; the seen ones, held-out phrasing
        rows = read_questions(paths[name], need_answers=True)
        if name == "heldout":  # an evenly spaced sample: generation is the slow part on CPU
            rows = rows[::max(1, len(rows) // args.eval_heldout)][:args.eval_heldout]
        result = evaluate_rag(retriever, rows, bot=bot, k=k, max_new_tokens=32)
        result["scores"] |= {f"retrieval_{key}": v for key, v in
                             evaluate_rag(Retriever.load(out / "kb-index", k=3), rows, k=3)["scores"].items()
                             if key.startswith(("hit@", "mrr"))}
        report[name] = result["scores"]
        with open(out / f"eval-{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in result["rows"])
        report[f"{name}_examples"] = result["rows"][:2]
    return report


def render(report: dict) -> str:
    k = report["k"]
    rows = [f"| {name} ({report[name]['n']} questions) | {report[name]['retrieval_hit@1']:.1%} | "
            f"{report[name]['retrieval_hit@3']:.1%} | {report[name]['accuracy_without_retrieval']:.1%} | "
            f"{report[name]['accuracy_with_retrieval']:.1%} |" for name in ("unseen", "heldout")]
    return "\n".join([
        f"## rag_demo — {time.strftime('%Y-%m-%d')}, {platform.machine()}, 2 cores (shared with other jobs), "
        f"torch {report['torch']}, {report['wall_time_s']:.0f} s wall",
        "",
        f"`PYTHONPATH=src:. python bench/rag_demo.py --out runs/rag-demo{' --pt ' + report['pt_reused'] if report['pt_reused'] else ''}` "
        f"(tiny llama 128x4, the demo's PT, then SFT on {report['counts']['sft_plain']} plain + "
        f"{report['counts']['sft_with_passages']} passage-augmented questions of the 90 seen diseases "
        f"(frames {report['frames']}), {report['sft_epochs']} epochs; top-{k} passage(s) in the prompt; "
        "a reply is correct when it contains the gold answer; greedy)",
        "",
        "| question set | retrieval hit@1 | hit@3 | accuracy without retrieval | accuracy with retrieval |",
        "|---|---|---|---|---|",
        *rows,
    ])


if __name__ == "__main__":
    sys.exit(main())
