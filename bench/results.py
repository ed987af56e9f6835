"""Shared by the bench scripts: append a result section to BENCHMARKS.md."""

from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def publish(report: str, append: bool) -> None:
    """Print ``report`` and, when ``append``, add it to the end of BENCHMARKS.md."""
    print(report)
    if append:
        with BENCHMARKS.open("a", encoding="utf-8") as f:
            f.write(report)
