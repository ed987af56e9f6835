"""Shared by the bench scripts: append a result section to BENCHMARKS.md."""

import platform
import sys
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def publish(report: str, append: bool) -> None:
    """Print ``report`` and, when ``append``, add it to the end of BENCHMARKS.md."""
    print(report)
    if append:
        with BENCHMARKS.open("a", encoding="utf-8") as f:
            f.write(report)


def section_header(name: str) -> str:
    """Return a BENCHMARKS.md section start: the bench, date, machine, threads, torch, command."""
    import torch

    return (f"\n## {name} — {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}\n\n"
            f"`python bench/{name}.py {' '.join(sys.argv[1:])}`")
