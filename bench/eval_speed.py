"""``medtune eval choice`` (log-likelihood) speed: batched vs one question at a time.

    python bench/eval_speed.py                      # 200 questions, batch 16 (~1-2 min on 2 cores)
    python bench/eval_speed.py --questions 40       # a quick look
    python bench/eval_speed.py --append             # add the table to BENCHMARKS.md
    python bench/eval_speed.py --threads 1 --note "machine shared with other jobs"

Questions: 200 spread evenly over ../shared/data/apollo/test/zh.json (all four sources, multi-answer
CMExam questions included; research-only data, used for measurement only), or, without it, as many
generated from the bundled sample texts. Model: a random tiny Llama (hidden 256, 4 layers, chatml
template) built locally. Both sides render the same chat-template prompts and score them with the
same function (``medtune.evaluation.choice.score_candidates``): the baseline calls it once per
question with batch 1; the batched side is ``run_benchmark``, what ``medtune eval choice`` runs
after loading the model (rendering, scoring, metrics and files included). Both must choose the
same letters.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def benchmark_file(tmp: Path, n: int) -> tuple[Path, str]:
    """A benchmark file of at least ``n`` questions and a line saying where it came from."""
    apollo = SHARED / "apollo/test/zh.json"
    if apollo.is_file():
        return apollo, f"{n} questions spread over apollo/test/zh.json"
    from medtune.models.tiny import bundled_text

    rng, pool = random.Random(0), [t[:40] for t in bundled_text() if len(t) > 8]
    rows = [{"question": rng.choice(pool), "options": {k: rng.choice(pool) for k in "ABCD"},
             "answer": rng.choice("ABCD"), "source": f"set{i % 4}"} for i in range(n)]
    path = tmp / "generated.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path, f"{n} questions generated from the bundled samples"


def spread(items: list, n: int) -> list:
    step = max(1, len(items) // n)
    return items[::step][:n]


def one_at_a_time(bot, items) -> tuple[float, list[str]]:
    """Render and score each question alone (batch 1); (seconds, chosen letters)."""
    from medtune.evaluation.choice import candidates, render_prompts, score_candidates

    started, letters = time.perf_counter(), []
    for item in items:
        texts, ids, _ = render_prompts(bot.tokenizer, [item], None, 0, 8, 2048)
        [scores] = score_candidates(bot.model, bot.tokenizer, ids, texts, [candidates(item)], 1)
        letters.append(max(scores, key=scores.get))
    return time.perf_counter() - started, letters


def batched(bot, bench, out: Path) -> tuple[float, list[str]]:
    """``medtune eval choice``'s path after the model load; (seconds, chosen letters)."""
    from medtune.evaluation.choice import run_benchmark

    started = time.perf_counter()
    run_benchmark(bot, bench, out, quiet=True)
    seconds = time.perf_counter() - started
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    return seconds, [r["prediction"] for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--note", help="a line added under the table (e.g. how busy the machine was)")
    ap.add_argument("--append", action="store_true", help="append the result to BENCHMARKS.md")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from medtune.evaluation.choice import ChoiceSettings, prepare_benchmark
    from medtune.inference.chat import ChatModel
    from medtune.models.tiny import TinySpec, build_tiny

    with tempfile.TemporaryDirectory(prefix="medtune-bench-") as tmp:
        tmp = Path(tmp)
        data, source = benchmark_file(tmp, args.questions)
        bench = prepare_benchmark([data], ChoiceSettings(batch_size=args.batch_size))
        bench.items = spread(bench.items, args.questions)
        model_dir = build_tiny(tmp / "tiny", TinySpec(hidden=256, layers=4, heads=4, kv_heads=4))
        bot = ChatModel.load(model_dir, device="cpu", dtype="float32")
        one_at_a_time(bot, bench.items[:4])  # warm-up
        single = one_at_a_time(bot, bench.items)
        many = batched(bot, bench, tmp / "out")
    publish_table(args, source, bench.items, single, many)


def publish_table(args, source, items, single, many) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from results import publish, section_header

    n, same = len(items), sum(a == b for a, b in zip(single[1], many[1]))
    multi = sum(len(i.answer) > 1 for i in items)
    lines = [section_header("eval_speed"), "",
             "| scoring | questions | seconds | questions/s |", "|---|---:|---:|---:|",
             f"| one question at a time (batch 1) | {n} | {single[0]:.1f} | {n / single[0]:.1f} |",
             f"| medtune eval choice, batched ({args.batch_size}) | {n} | {many[0]:.1f} | {n / many[0]:.1f} |",
             "", f"- {source} ({multi} multi-answer); model: random Llama hidden 256, 4 layers, chatml",
             f"- batched vs one at a time: {single[0] / many[0]:.2f}x; same letters chosen: {same}/{n}",
             *([f"- {args.note}"] if args.note else []), ""]
    publish("\n".join(lines) + "\n", args.append)


if __name__ == "__main__":
    main()
