"""What every ``medtune eval`` command writes: ``metrics.json`` and a printed table.

Example::

    from medtune.evaluation.results import EvalResult, write_result
    result = EvalResult(task="choice", model="runs/sft", data=["apollo/test/zh.json"],
                        overall={"accuracy": 0.41, "n": 100}, group_by="source",
                        groups={"cmexam": {"accuracy": 0.38, "n": 50}, "cmb-single": {"accuracy": 0.44, "n": 50}})
    write_result(result, "runs/eval/choice")       # -> runs/eval/choice/metrics.json, table printed

``metrics.json`` is the contract ``medtune eval report`` reads::

    {"task": "gen|choice|ppl|judge|safety", "model": str, "data": [str], "created": ISO time,
     "overall": {metric: number, "n": int}, "group_by": str | null,
     "groups": {name: {metric: number, "n": int}}, "skipped": {reason: count},
     "sizes": {metric: int} (the n behind an overall metric whose n differs from overall["n"]),
     "settings": {...}, "samples": file name of per-item outputs (JSONL) or null, "seconds": float}

Per-item files (``samples``) hold one JSON object per line with at least ``id`` and, where they
apply, ``prompt``, ``prediction``, ``reference``, ``correct`` / ``score``, ``group``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medtune.files import atomic_write_text


@dataclass
class EvalResult:
    task: str
    model: str
    data: list = field(default_factory=list)
    overall: dict = field(default_factory=dict)
    group_by: str | None = None
    groups: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)
    sizes: dict = field(default_factory=dict)  # metric -> its n, where it is not overall["n"]
    settings: dict = field(default_factory=dict)
    samples: str | None = None
    seconds: float = 0.0
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))


def write_result(result: EvalResult, out_dir, quiet: bool = False) -> Path:
    """Write ``out_dir/metrics.json`` and print the result as a table (unless ``quiet``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "metrics.json"
    atomic_write_text(path, json.dumps(asdict(result), ensure_ascii=False, indent=2) + "\n")
    if not quiet:
        print(format_table(result))
        print(f"-> {path}")
    return path


def read_result(path) -> EvalResult:
    """Return the ``EvalResult`` in a ``metrics.json`` file (or the dir holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    return EvalResult(**json.loads(path.read_text(encoding="utf-8")))


def format_table(result: EvalResult) -> str:
    """Return a plain-text table: one row per group, then the overall row."""
    metrics = [k for k in result.overall if k != "n"]
    header = [result.group_by or "", *metrics, "n"]
    rows = [[name, *(_fmt(g.get(m)) for m in metrics), str(g.get("n", ""))]
            for name, g in result.groups.items()]
    rows.append(["overall", *(_fmt(result.overall.get(m)) for m in metrics), str(result.overall.get("n", ""))])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))
    skipped = f"\nskipped: {result.skipped}" if result.skipped else ""
    return "\n".join([f"[{result.task}] {result.model}", line(header), *map(line, rows)]) + skipped


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
