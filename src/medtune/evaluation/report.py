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
    """Return what the report says of a training run: stage, parent, data, the training loss at
    the first and the last logged step (``(step, loss)``), the run's mean loss, the last eval
    loss, steps and wall time."""
    lineage = json.loads((path / "lineage.json").read_text(encoding="utf-8"))
    metrics = lineage.get("metrics", {})
    data = lineage.get("data", [])
    history = _history(path)
    losses = [(h.get("step"), h["loss"]) for h in history if isinstance(h.get("loss"), (int, float))]
    evals = [h["eval_loss"] for h in history if isinstance(h.get("eval_loss"), (int, float))]
    return {"stage": lineage.get("stage", "?"), "parent": Path(str(lineage.get("parent_model", ""))).name,
            "data": ", ".join(f"{Path(str(d.get('path', '?'))).name} ({d.get('records', '?')})" for d in data
                              if isinstance(d, dict)),
            "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
            "mean_loss": metrics.get("train_loss"),
            "eval_loss": evals[-1] if evals else metrics.get("eval_loss"),
            "steps": metrics.get("global_steps"), "seconds": lineage.get("wall_time_s")}


def _history(path: Path) -> list:
    log = path / "log_history.json"
    return json.loads(log.read_text(encoding="utf-8")) if log.is_file() else []


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


def shown_metrics(result: EvalResult) -> list[str]:
    """The overall metrics a report shows: every numeric one but the sizes (``n``)."""
    return [k for k in flat_metrics(result.overall) if k.split("/")[-1] != "n"]


def main_metric(result: EvalResult) -> str | None:
    """Return the metric the per-group bars show: the first numeric overall metric but ``n``."""
    return next(iter(shown_metrics(result)), None)


def metric_n(result: EvalResult, metric: str) -> int | None:
    """The number of items behind ``metric``: its own size when recorded, else overall ``n``."""
    n = result.sizes.get(metric, result.overall.get("n"))
    return n if isinstance(n, int) and not isinstance(n, bool) else None


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
    kind: str  # h2 | p | list | table | image
    text: str = ""
    header: list = field(default_factory=list)
    rows: list = field(default_factory=list)  # table rows; list: the sentences
    image: str = ""  # file name inside the output dir


@dataclass(frozen=True)
class Marked:
    """An answer with its right / wrong mark (``correct`` None: no mark)."""

    text: str
    correct: bool | None

    def __str__(self) -> str:
        return {True: "✓ ", False: "✗ ", None: ""}[self.correct] + self.text


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
    from medtune.evaluation.headlines import format_duration, run_headline
    from medtune.evaluation.plots import plot_losses

    header = ["run", "stage", "parent", "data (records)", "final train loss (step)", "mean train loss",
              "eval loss", "steps", "time"]
    summaries = {name: run_summary(path) for name, path in runs.items()}
    rows = [[name, s["stage"], s["parent"], s["data"],
             f"{s['final_loss'][1]:.4f} (step {s['final_loss'][0]})" if s["final_loss"] else None,
             _number(s["mean_loss"]), _number(s["eval_loss"]), s["steps"], format_duration(s["seconds"])]
            for name, s in summaries.items()]
    blocks = [Block("h2", "Training runs"), Block("list", rows=[run_headline(n, s) for n, s in summaries.items()]),
              Block("table", header=header, rows=rows)]
    histories = loss_histories(runs)
    if histories:
        plot_losses(histories, out / "loss_curves.png")
        blocks.append(Block("image", "training loss per run, the final value marked", image="loss_curves.png"))
    return blocks


def _number(value) -> str | None:
    return f"{value:.4f}" if isinstance(value, (int, float)) else None


def _metric_cell(result: EvalResult, metric: str) -> str | None:
    from medtune.evaluation.headlines import format_value

    value = flat_metrics(result.overall).get(metric)
    if value is None:
        return None
    n = metric_n(result, metric)
    return format_value(metric, value) + (f" (n={n:,})" if n is not None else "")


def _task_blocks(task: str, evals: dict, out: Path, n_samples: int) -> list[Block]:
    from medtune.evaluation.headlines import metric_headline, metric_label

    metrics = []
    for _, result in evals.values():
        metrics += [k for k in shown_metrics(result) if k not in metrics]
    headlines = [metric_headline(m, [(name, flat_metrics(r.overall).get(m), metric_n(r, m))
                                     for name, (_, r) in evals.items()]) for m in metrics]
    rows = [[name, r.model, *(_metric_cell(r, m) for m in metrics), ", ".join(r.data), _skipped(r.skipped)]
            for name, (_, r) in evals.items()]
    blocks = [Block("h2", f"Evaluation: {task}"), Block("list", rows=[h for h in headlines if h]),
              Block("table", header=["input", "model", *map(metric_label, metrics), "data", "skipped"], rows=rows)]
    chart = _group_chart(task, evals, out)
    if chart:
        blocks.append(chart)
    return blocks + _sample_blocks(evals, n_samples)


def _skipped(skipped: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in skipped.items()) if skipped else ""


def _group_chart(task: str, evals: dict, out: Path) -> Block | None:
    from medtune.evaluation.plots import plot_grouped_bars

    first = next(iter(evals.values()))[1]
    metric = main_metric(first)
    groups = sorted({g for _, r in evals.values() for g in r.groups})
    if not metric or not groups:
        return None
    values = {name: [flat_metrics(r.groups.get(g, {})).get(metric) for g in groups]
              for name, (_, r) in evals.items()}
    image = f"groups_{_slug(task)}.png"
    label = f"{metric} per {first.group_by or 'group'}"
    plot_grouped_bars(groups, values, f"{task}: {label}", out / image, metric=metric)
    return Block("image", label, image=image)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


def _pick_items(per_input: dict, n_samples: int) -> list:
    """Ids answered by every input: up to ``n_samples`` of each ``set`` the rows name (e.g. held-out
    and unseen questions; one set when they name none), those the inputs disagree on (right vs
    wrong) first."""
    first = next(iter(per_input.values()))
    common = [i for i in first if all(i in rows for rows in per_input.values())]
    chosen = set()
    for part in dict.fromkeys(first[i].get("set") for i in common):
        ids = [i for i in common if first[i].get("set") == part]
        split = [i for i in ids if {rows[i].get("correct") for rows in per_input.values()} >= {True, False}]
        chosen.update((split + [i for i in ids if i not in split])[:n_samples])
    return [i for i in common if i in chosen]


def _sample_blocks(evals: dict, n_samples: int) -> list[Block]:
    """Side-by-side answers, each marked right / wrong where the eval says, for ids every input
    answered (the ones they disagree on first)."""
    per_input = {name: samples(path, r) for name, (path, r) in evals.items()}
    per_input = {k: v for k, v in per_input.items() if v}
    if not per_input or n_samples <= 0:
        return []
    rows = []
    for item in _pick_items(per_input, n_samples):
        first = next(iter(per_input.values()))[item]
        prompt = first.get("prompt") or first.get("question") or ""
        rows.append([item, _clip(_text(prompt)), _clip(_text(first.get("reference", first.get("answer", "")))),
                     *(_marked(rows_[item]) for rows_ in per_input.values())])
    note = ("Sample answers side by side (✓ right, ✗ wrong, as the eval scored them; "
            "the items the inputs disagree on first)")
    return [Block("p", note), Block("table", header=["id", "prompt", "reference", *per_input], rows=rows)]


def _marked(row: dict) -> Marked:
    correct = row.get("correct")
    text = _clip(_text(row.get("prediction", row.get("response", ""))))
    return Marked(text, correct if isinstance(correct, bool) else None)


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
        elif b.kind == "list":
            lines += [f"- {sentence}" for sentence in b.rows] + [""]
        elif b.kind == "image":
            lines += [f"![{b.text}]({b.image})", ""]
        else:
            esc = lambda v: _cell(v).replace("|", "\\|").replace("\n", " ")
            lines += ["| " + " | ".join(map(esc, b.header)) + " |", "|" + "---|" * len(b.header)]
            lines += ["| " + " | ".join(map(esc, row)) + " |" for row in b.rows] + [""]
    return "\n".join(lines)


def _css(page_text: str) -> str:
    """The page's styles: the font stack (system CJK fonts, then the embedded glyphs of
    ``page_text``), tables, headlines and right / wrong marks."""
    from medtune.evaluation.fonts import FONT_STACK, embedded_font_css

    return (embedded_font_css(page_text)
            + f"body{{font-family:{FONT_STACK};max-width:1100px;margin:2em auto;padding:0 1em;color:#222;"
            "line-height:1.45}table{border-collapse:collapse;margin:1em 0;font-size:14px}"
            "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}th{background:#f3f3f3}"
            "td{max-width:360px;white-space:pre-wrap}td:first-child{white-space:nowrap}img{max-width:100%}"
            "ul.headlines{font-size:15px;padding-left:1.2em}ul.headlines li{margin:.25em 0}"
            ".ok{color:#0a7d32;font-weight:bold}.bad{color:#b3261e;font-weight:bold}"
            "figcaption{color:#555;font-size:13px}")


def _html_cell(value) -> str:
    if isinstance(value, Marked) and value.correct is not None:
        cls, mark = ("ok", "✓") if value.correct else ("bad", "✗")
        return f"<span class='{cls}'>{mark}</span> {html.escape(value.text)}"
    return html.escape(_cell(value))


def to_html(title: str, blocks: list[Block], out: Path) -> str:
    parts = [f"<h1>{html.escape(title)}</h1>"]
    for b in blocks:
        if b.kind == "h2":
            parts.append(f"<h2>{html.escape(b.text)}</h2>")
        elif b.kind == "p":
            parts.append(f"<p>{html.escape(b.text)}</p>")
        elif b.kind == "list":
            parts.append("<ul class='headlines'>" + "".join(f"<li>{html.escape(s)}</li>" for s in b.rows) + "</ul>")
        elif b.kind == "image":
            data = base64.b64encode((out / b.image).read_bytes()).decode()
            parts.append(f"<figure><img alt='{html.escape(b.text)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(b.text)}</figcaption></figure>")
        else:
            head = "".join(f"<th>{html.escape(_cell(h))}</th>" for h in b.header)
            body = "".join("<tr>" + "".join(f"<td>{_html_cell(v)}</td>" for v in row) + "</tr>" for row in b.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    body = "".join(parts)
    text = html.unescape(body)
    return (f"<!doctype html><html lang='zh-CN'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_css(text)}</style></head><body>{body}</body></html>\n")


def _inputs_line(found: Inputs) -> str:
    parts = []
    if found.runs:
        parts.append("training runs " + ", ".join(found.runs))
    if found.evals:
        parts.append("evaluations " + ", ".join(f"{name} ({r.task})" for name, (_, r) in found.evals.items()))
    return "Inputs: " + "; ".join(parts) + "."


def write_report(paths, out_dir, n_samples: int = 5, title: str | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` (+ PNGs) comparing ``paths``; return both paths."""
    found = collect(paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = title or f"medtune report — {time.strftime('%Y-%m-%d %H:%M')}"
    blocks = [Block("p", _inputs_line(found)), *build_blocks(found, out, n_samples)]
    md, page = out / "report.md", out / "report.html"
    md.write_text(to_markdown(title, blocks), encoding="utf-8")
    page.write_text(to_html(title, blocks, out), encoding="utf-8")
    return md, page
