"""Comparison reports: training runs and eval results in one markdown and one self-contained HTML file.

Example::

    medtune eval report runs/demo/sft runs/demo/grpo runs/eval/choice-sft runs/eval/choice-grpo --output runs/report

Each input is a training run dir (``lineage.json``, ``log_history.json``), an eval output dir
(``metrics.json`` from any ``medtune eval`` command), or a dir holding such dirs one level down
(a pipeline output, a folder of evals). The report has: the runs (stage, parent, data, losses,
time) with their loss curves; for each eval task a table of every input's overall metrics and a
bar chart per group (subject / source / category); and sample answers side by side for items
that several inputs answered. ``report.html`` embeds its images and styles: one file to share.
"""

from __future__ import annotations

import base64
import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from medtune.errors import MedtuneError
from medtune.evaluation.results import EvalResult, read_result
from medtune.files import iter_jsonl


@dataclass
class Inputs:
    runs: dict = field(default_factory=dict)  # name -> run dir
    evals: dict = field(default_factory=dict)  # name -> (dir, EvalResult)


def collect(paths) -> Inputs:
    """Return the runs and eval results found at ``paths`` (one level down for container dirs)."""
    found = Inputs()
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise MedtuneError(f"{path}: not a directory (expected a run dir or an eval output dir)")
        children = [path] if _kind(path) else sorted(p for p in path.iterdir() if p.is_dir() and _kind(p))
        if not children:
            raise MedtuneError(f"{path}: no lineage.json or metrics.json here or one level down")
        for child in children:
            _add(found, child)
    return found


def _kind(path: Path) -> str | None:
    if (path / "metrics.json").is_file():
        return "eval"
    if (path / "lineage.json").is_file():
        return "run"
    return None


def _add(found: Inputs, path: Path) -> None:
    kind = _kind(path)
    name = _unique(path, found.evals if kind == "eval" else found.runs)  # runs and evals have own tables
    if kind == "eval":
        try:
            found.evals[name] = (path, read_result(path))
        except (TypeError, json.JSONDecodeError) as exc:
            raise MedtuneError(f"{path / 'metrics.json'}: not a medtune eval result ({exc})") from None
    else:
        found.runs[name] = path


def _unique(path: Path, taken: dict) -> str:
    name = path.name
    if name in taken:
        name = f"{path.parent.name}/{path.name}"
    return name


def run_summary(path: Path) -> dict:
    """Return one table row of a training run from its lineage and log history."""
    lineage = json.loads((path / "lineage.json").read_text(encoding="utf-8"))
    metrics = lineage.get("metrics", {})
    data = lineage.get("data", [])
    return {"stage": lineage.get("stage", "?"), "parent": Path(str(lineage.get("parent_model", ""))).name,
            "data": ", ".join(f"{Path(str(d.get('path', '?'))).name} ({d.get('records', '?')})" for d in data
                              if isinstance(d, dict)),
            "train loss": metrics.get("train_loss"), "eval loss": metrics.get("eval_loss"),
            "steps": metrics.get("global_steps"), "seconds": lineage.get("wall_time_s")}


def loss_histories(runs: dict) -> dict:
    out = {}
    for name, path in runs.items():
        log = path / "log_history.json"
        if log.is_file():
            history = json.loads(log.read_text(encoding="utf-8"))
            if any("loss" in h for h in history):
                out[name] = history
    return out


def flat_metrics(metrics: dict, prefix: str = "") -> dict:
    """Return the numeric entries of ``metrics``, nested keys joined by '/'."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(flat_metrics(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out


def main_metric(result: EvalResult) -> str | None:
    """Return the metric the per-group bars show: the first numeric overall metric but ``n``."""
    return next((k for k in flat_metrics(result.overall) if k != "n"), None)


def samples(path: Path, result: EvalResult, limit: int = 10_000) -> dict:
    """Return ``{id: row}`` of an eval's per-item file (empty when it has none)."""
    if not result.samples or not (path / result.samples).is_file():
        return {}
    rows = {}
    for _, row in iter_jsonl(path / result.samples):
        if len(rows) >= limit:
            break
        rows[str(row.get("id", len(rows)))] = row
    return rows


# --- building the document: a list of blocks rendered twice (markdown, HTML) -----------------


@dataclass
class Block:
    kind: str  # h2 | p | table | image
    text: str = ""
    header: list = field(default_factory=list)
    rows: list = field(default_factory=list)
    image: str = ""  # file name inside the output dir


def build_blocks(found: Inputs, out: Path, n_samples: int) -> list[Block]:
    """Return the report's blocks; plots are written into ``out``."""
    blocks = []
    if found.runs:
        blocks += _run_blocks(found.runs, out)
    tasks: dict = {}
    for name, (path, result) in found.evals.items():
        tasks.setdefault(result.task, {})[name] = (path, result)
    for task, evals in tasks.items():
        blocks += _task_blocks(task, evals, out, n_samples)
    return blocks


def _run_blocks(runs: dict, out: Path) -> list[Block]:
    from medtune.evaluation.plots import plot_losses

    header = ["run", "stage", "parent", "data (records)", "train loss", "eval loss", "steps", "seconds"]
    rows = [[name, *run_summary(path).values()] for name, path in runs.items()]
    blocks = [Block("h2", "Training runs"), Block("table", header=header, rows=rows)]
    histories = loss_histories(runs)
    if histories:
        plot_losses(histories, out / "loss_curves.png")
        blocks.append(Block("image", "training loss per run", image="loss_curves.png"))
    return blocks


def _task_blocks(task: str, evals: dict, out: Path, n_samples: int) -> list[Block]:
    metrics = []
    for _, result in evals.values():
        metrics += [k for k in flat_metrics(result.overall) if k not in metrics]
    rows = [[name, *(flat_metrics(r.overall).get(m) for m in metrics), ", ".join(r.data),
             _skipped(r.skipped)] for name, (_, r) in evals.items()]
    blocks = [Block("h2", f"Evaluation: {task}"),
              Block("table", header=["input", *metrics, "data", "skipped"], rows=rows)]
    chart = _group_chart(task, evals, out)
    if chart:
        blocks.append(chart)
    return blocks + _sample_blocks(evals, n_samples)


def _skipped(skipped: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in skipped.items()) if skipped else ""


def _group_chart(task: str, evals: dict, out: Path) -> Block | None:
    first = next(iter(evals.values()))[1]
    metric = main_metric(first)
    groups = sorted({g for _, r in evals.values() for g in r.groups})
    if not metric or not groups:
        return None
    values = {name: [flat_metrics(r.groups.get(g, {})).get(metric) for g in groups]
              for name, (_, r) in evals.items()}
    image = f"groups_{_slug(task)}.png"
    plot_grouped_bars(groups, values, f"{task}: {metric} per {first.group_by or 'group'}", out / image)
    return Block("image", f"{metric} per {first.group_by or 'group'}", image=image)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


def plot_grouped_bars(groups, values: dict, title: str, path: Path) -> None:
    """Write a PNG bar chart: one cluster per group, one bar per input (missing values left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / max(1, len(values))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(groups) * max(1, len(values))), 3.8))
    for i, (name, ys) in enumerate(values.items()):
        xs = [g + i * width for g, y in enumerate(ys) if y is not None]
        ax.bar(xs, [y for y in ys if y is not None], width, label=name)
    ax.set_xticks([g + width * (len(values) - 1) / 2 for g in range(len(groups))])
    ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=8)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sample_blocks(evals: dict, n_samples: int) -> list[Block]:
    """Side-by-side answers for ids present in every input's per-item file."""
    per_input = {name: samples(path, r) for name, (path, r) in evals.items()}
    per_input = {k: v for k, v in per_input.items() if v}
    if not per_input or n_samples <= 0:
        return []
    common = [i for i in next(iter(per_input.values())) if all(i in rows for rows in per_input.values())]
    rows = []
    for item in common[:n_samples]:
        first = next(iter(per_input.values()))[item]
        prompt = first.get("prompt") or first.get("question") or ""
        rows.append([item, _clip(_text(prompt)), _clip(_text(first.get("reference", first.get("answer", "")))),
                     *(_clip(_text(rows_[item].get("prediction", rows_[item].get("response", ""))))
                       for rows_ in per_input.values())])
    return [Block("p", "Sample answers side by side"),
            Block("table", header=["id", "prompt", "reference", *per_input], rows=rows)]


def _text(value) -> str:
    if isinstance(value, list):  # messages
        return " / ".join(m.get("content", "") if isinstance(m, dict) else str(m) for m in value)
    return "" if value is None else str(value)


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


# --- rendering ---------------------------------------------------------------------------------


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def to_markdown(title: str, blocks: list[Block]) -> str:
    lines = [f"# {title}", ""]
    for b in blocks:
        if b.kind == "h2":
            lines += [f"## {b.text}", ""]
        elif b.kind == "p":
            lines += [b.text, ""]
        elif b.kind == "image":
            lines += [f"![{b.text}]({b.image})", ""]
        else:
            esc = lambda v: _cell(v).replace("|", "\\|").replace("\n", " ")
            lines += ["| " + " | ".join(map(esc, b.header)) + " |", "|" + "---|" * len(b.header)]
            lines += ["| " + " | ".join(map(esc, row)) + " |" for row in b.rows] + [""]
    return "\n".join(lines)


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;"
        "padding:4px 8px;vertical-align:top;text-align:left}th{background:#f3f3f3}"
        "td{max-width:360px;white-space:pre-wrap}img{max-width:100%}")


def to_html(title: str, blocks: list[Block], out: Path) -> str:
    head = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>")
    parts = [head]
    for b in blocks:
        if b.kind == "h2":
            parts.append(f"<h2>{html.escape(b.text)}</h2>")
        elif b.kind == "p":
            parts.append(f"<p>{html.escape(b.text)}</p>")
        elif b.kind == "image":
            data = base64.b64encode((out / b.image).read_bytes()).decode()
            parts.append(f"<figure><img alt='{html.escape(b.text)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(b.text)}</figcaption></figure>")
        else:
            head = "".join(f"<th>{html.escape(_cell(h))}</th>" for h in b.header)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
                           for row in b.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    return "".join(parts) + "</body></html>\n"


def write_report(paths, out_dir, n_samples: int = 5, title: str | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` (+ PNGs) comparing ``paths``; return both paths."""
    found = collect(paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = title or f"medtune report — {time.strftime('%Y-%m-%d %H:%M')}"
    blocks = [Block("p", "Inputs: " + ", ".join([*found.runs, *found.evals])), *build_blocks(found, out, n_samples)]
    md, page = out / "report.md", out / "report.html"
    md.write_text(to_markdown(title, blocks), encoding="utf-8")
    page.write_text(to_html(title, blocks, out), encoding="utf-8")
    return md, page
