"""``medtune --help`` start-up time vs bare Python and vs importing torch + transformers.

Run::

    python bench/cli_startup.py            # 10 runs each, appends to BENCHMARKS.md
    python bench/cli_startup.py --runs 3 --no-append
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import publish

CASES = {
    "python -c pass (floor)": [sys.executable, "-c", "pass"],
    "medtune --help": [sys.executable, "-m", "medtune", "--help"],
    "import torch, transformers": [sys.executable, "-c", "import torch, transformers"],
}


def median_seconds(cmd, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description="medtune --help start-up time")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    results = {name: median_seconds(cmd, args.runs) for name, cmd in CASES.items()}
    heavy = results["import torch, transformers"] / results["medtune --help"]
    lines = [f"\n## cli_startup — {time.strftime('%Y-%m-%d')}\n",
             f"`python bench/cli_startup.py --runs {args.runs}` (median wall time of a fresh process)\n",
             "| command | median s |", "|---|---|"]
    lines += [f"| {name} | {sec:.3f} |" for name, sec in results.items()]
    lines.append(f"\n**`medtune --help` is {heavy:.1f}× faster than importing torch + transformers.**\n")
    report = "\n".join(lines)
    publish(report, append=not args.no_append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
