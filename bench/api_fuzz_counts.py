"""The API fuzz loop (tests/helpers/api_fuzz.py) counted: cases, 5xx, connection resets, /health
after — the numbers issue #14 asks for, 5xx and resets goal 0.

Run::

    PYTHONPATH=src:. python bench/api_fuzz_counts.py                   # 400 cases, seed 0
    PYTHONPATH=src:. python bench/api_fuzz_counts.py --append          # also adds it to BENCHMARKS.md
    PYTHONPATH=/other/checkout/src:. python bench/api_fuzz_counts.py   # another version's server

The server is the real app (uvicorn on 127.0.0.1) over the tiny random model.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=400, help="requests sent (default 400)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--append", action="store_true", help="append the result to BENCHMARKS.md")
    parser.add_argument("--show", type=int, default=20, help="failures listed (default 20)")
    args = parser.parse_args()

    from results import publish

    from medtune.inference.engines import HFEngine
    from medtune.models.tiny import TinySpec, build_tiny
    from medtune.serving.api import create_app
    from tests.helpers.api_fuzz import fuzz_limits, run_fuzz
    from tests.helpers.servers import Server

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medtune-api-fuzz-") as tmp:
        tiny = build_tiny(Path(tmp) / "tiny", TinySpec(hidden=32, layers=2, heads=4, kv_heads=2, vocab_size=600))
        engine = HFEngine.load(tiny, name="tiny", device="cpu")
        with Server(create_app(engine, limits=fuzz_limits())) as srv:
            counts = run_fuzz(srv.url, args.cases, args.seed)
    seconds = time.perf_counter() - started
    for line in (counts.server_errors + counts.resets)[:args.show]:
        print("  " + line[:300])
    totals = counts.table()
    row = " | ".join(str(v) for v in totals.values())
    report = (f"\n## api_fuzz_counts — {time.strftime('%Y-%m-%d')}\n\n"
              f"`python bench/api_fuzz_counts.py {' '.join(sys.argv[1:])}` ({seconds:.0f}s)\n\n"
              f"| {' | '.join(totals)} |\n|{'---|' * len(totals)}\n| {row} |\n")
    publish(report, args.append)
    return 0 if not (counts.server_errors or counts.resets) and counts.health_after else 1


if __name__ == "__main__":
    sys.exit(main())
