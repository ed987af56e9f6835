"""The sentences and numbers a person reads first in a report: values as percentages where they
are rates, one headline sentence per comparison, training losses as they ended.

>>> format_value("heldout_accuracy", 0.8139)
'81.4%'
>>> format_value("perplexity", 12.3456)
'12.35'
>>> metric_headline("heldout_accuracy", [("base", 0.0, 360), ("pt", 0.0694, 360), ("sft", 0.8139, 360)])
'Heldout accuracy: base 0.0% → pt 6.9% → sft 81.4% (n=360 each); best: sft, +81.4 points over base.'
>>> run_headline("pt", {"first_loss": (1, 6.5), "final_loss": (690, 1.05), "eval_loss": None})
'pt: training loss 6.500 at step 1 → 1.050 at step 690 (final).'
"""

from __future__ import annotations

import re

__all__ = ["format_duration", "format_value", "is_rate", "lower_is_better", "metric_headline", "metric_label",
           "run_headline"]

_RATE = re.compile(r"acc|accuracy|rate|match|exact|pass|correct|wins?_share|refus", re.IGNORECASE)
_LOWER = re.compile(r"loss|perplexity|ppl|rank|error|failed", re.IGNORECASE)


def is_rate(metric: str, value=None) -> bool:
    """True for a metric shown as a percentage: its name says rate / accuracy and the value
    (when given) lies in [0, 1]."""
    if not _RATE.search(metric.split("/")[-1]):
        return False
    return value is None or (isinstance(value, (int, float)) and 0.0 <= value <= 1.0)


def lower_is_better(metric: str) -> bool:
    return bool(_LOWER.search(metric.split("/")[-1]))


def format_value(metric: str, value) -> str:
    """``81.4%`` for a rate, an int as it is, other numbers with 4 significant digits, '-' for None."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if is_rate(metric, value):
        return f"{100 * value:.1f}%"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}"


def metric_label(metric: str) -> str:
    """``heldout_accuracy`` -> ``Heldout accuracy``; a nested ``a/b`` keeps its path."""
    text = metric.replace("_", " ")
    return text[:1].upper() + text[1:]


def _difference(metric: str, best: float, base: float) -> str:
    if is_rate(metric, best) and is_rate(metric, base):
        return f"{100 * (best - base):+.1f} points"
    return f"{best - base:+.4g}"


def _sizes(values: list) -> str:
    sizes = [n for _, _, n in values if n is not None]
    if not sizes:
        return ""
    if len(set(sizes)) == 1:
        return f" (n={sizes[0]:,}{' each' if len(values) > 1 else ''})"
    return " (n=" + ", ".join(f"{name} {n:,}" for name, _, n in values if n is not None) + ")"


def metric_headline(metric: str, values: list[tuple[str, float, int | None]]) -> str:
    """One sentence comparing ``(input, value, n)`` in the given order: each value, the n behind
    them, and the best input with its difference from the first (the baseline)."""
    values = [v for v in values if isinstance(v[1], (int, float))]
    if not values:
        return ""
    shown = " → ".join(f"{name} {format_value(metric, value)}" for name, value, _ in values)
    sentence = f"{metric_label(metric)}: {shown}{_sizes(values)}"
    if len(values) < 2:
        return sentence + "."
    pick = min if lower_is_better(metric) else max
    best = pick(values, key=lambda v: v[1])
    first = values[0]
    if best[1] == first[1]:
        return sentence + f"; none is better than {first[0]}."
    return sentence + f"; best: {best[0]}, {_difference(metric, best[1], first[1])} over {first[0]}."


def run_headline(name: str, summary: dict) -> str:
    """``pt: training loss 6.5 at step 1 → 1.05 at step 690 (final); eval loss 1.2.``"""
    first, final = summary.get("first_loss"), summary.get("final_loss")
    if not final:
        return f"{name}: no training loss logged."
    text = f"{name}: training loss "
    if first and first[0] != final[0]:
        text += f"{first[1]:.3f} at step {first[0]} → "
    text += f"{final[1]:.3f} at step {final[0]} (final)"
    if summary.get("eval_loss") is not None:
        text += f"; eval loss {summary['eval_loss']:.3f}"
    return text + "."


def format_duration(seconds) -> str:
    """``3 min 35 s`` / ``42.0 s`` / '-'."""
    if not isinstance(seconds, (int, float)):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    return f"{minutes // 60} h {minutes % 60} min"
