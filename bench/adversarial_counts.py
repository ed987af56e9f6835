"""The adversarial CLI corpus (tests/helpers/adversarial.py) counted: cases, tracebacks, wrong exit
codes, inputs damaged — the numbers issue #14 asks for, all goals 0.

Run::

    PYTHONPATH=src:. python bench/adversarial_counts.py              # prints the table and the failures
    PYTHONPATH=src:. python bench/adversarial_counts.py --append     # also adds it to BENCHMARKS.md
    PYTHONPATH=/other/checkout/src:. python bench/adversarial_counts.py --no-model   # another version

``--no-model`` leaves out the cases that need the tiny model (faster, and runs on a checkout
whose model commands differ).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

MODEL_CASES = ("merge_", "gguf_", "tokenizer_", "model_", "infer_", "eval_", "train_", "pipeline_")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--append", action="store_true", help="append the result to BENCHMARKS.md")
    parser.add_argument("--no-model", action="store_true", help="skip the cases that need a model")
    parser.add_argument("-k", help="run only cases whose name contains this")
    args = parser.parse_args()

    from tests.helpers.adversarial import CASES, Context, counts, run_case

    names = [n for n in CASES if (not args.no_model or not n.startswith(MODEL_CASES))
             and (not args.k or args.k in n)]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medtune-adversarial-") as tmp:
        tmp = Path(tmp)
        ctx = Context(tiny=_tiny(tmp) if any(n.startswith(MODEL_CASES) for n in names) else tmp,
                      scratch=tmp)
        outcomes = [run_case(name, tmp / "cases", ctx) for name in names]
    seconds = time.perf_counter() - started
    for o in outcomes:
        if not o.ok or o.skipped:
            note = o.skipped and f"skipped: {o.skipped}" or _failure(o)
            print(f"  {o.name:<48} {note}")
    totals = counts(outcomes)
    from results import publish

    row = " | ".join(str(v) for v in totals.values())
    report = (f"\n## adversarial_counts — {time.strftime('%Y-%m-%d')}\n\n"
              f"`python bench/adversarial_counts.py {' '.join(sys.argv[1:])}` ({seconds:.0f}s)\n\n"
              f"| {' | '.join(totals)} |\n|{'---|' * len(totals)}\n| {row} |\n")
    publish(report, args.append)
    return 0 if all(o.ok for o in outcomes) else 1


def _tiny(tmp: Path) -> Path:
    from medtune.models.tiny import TinySpec, build_tiny

    return build_tiny(tmp / "tiny", TinySpec(hidden=32, layers=2, heads=4, kv_heads=2, vocab_size=600))


def _failure(o) -> str:
    parts = []
    if o.code != o.expect:
        parts.append(f"exit {o.code} (want {o.expect})")
    if o.traceback:
        parts.append("traceback")
    if o.damaged:
        parts.append(f"damaged {', '.join(Path(p).name for p in o.damaged)}")
    if o.problem:
        parts.append(o.problem)
    last = [ln for ln in o.stderr.strip().splitlines() if ln.strip()][-1:] or [""]
    return "; ".join(parts) + f"  | {last[0][:140]}"


if __name__ == "__main__":
    sys.exit(main())
