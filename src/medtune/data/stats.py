"""Dataset statistics in one streaming pass, a length histogram, and a table for the terminal.

Memory stays small for millions of records: lengths go into compact arrays and duplicate keys
into a uint64 array (8 bytes a record), never the records themselves.

Example (what ``medtune data stats`` does)::

    from medtune.data.mixing import line_offsets, read_lines_at
    from medtune.data.stats import compute_stats, format_stats, plot_lengths
    stats = compute_stats(read_lines_at("train.jsonl", line_offsets("train.jsonl")))
    print(format_stats(stats))
    plot_lengths(stats, "train.lengths.png")
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from medtune.data.clean.dedup import exact_key
from medtune.data.clean.quality import detect_language
from medtune.data.readers.records import (
    full_text,
    prompt_text,
    record_shape,
    response_text,
    turn_count,
)
from medtune.errors import MedtuneError

__all__ = ["DatasetStats", "compute_stats", "format_stats", "plot_lengths"]

PERCENTILES = (50, 90, 99)


class DatasetStats(dict):
    """The summary of :func:`compute_stats`: a plain JSON-ready dict (``json.dumps`` works) plus
    the raw per-record lengths in :attr:`lengths` for :func:`plot_lengths`.

    Keys: ``records``, ``shapes``, ``sources``, ``languages`` (counts), ``turns`` (mean, max,
    multi_turn), ``duplicates`` (exact, rate), ``prompt_chars`` and ``response_chars`` (mean, p50,
    p90, p99, max), and with a tokenizer ``tokens`` (prompt + response; total, mean, p50 … max).
    :attr:`lengths` maps ``prompt_chars``, ``response_chars`` (and ``tokens``) to int64 arrays."""

    def __init__(self, summary: dict, lengths: dict[str, np.ndarray]):
        super().__init__(summary)
        self.lengths = lengths


def length_summary(values: np.ndarray) -> dict:
    """Return mean, p50, p90, p99 and max of ``values`` (nearest-rank percentiles, so each is a
    length that occurs); an empty dict for no values."""
    if len(values) == 0:
        return {}
    ranks = np.percentile(values, PERCENTILES, method="inverted_cdf")
    summary = {"mean": round(float(values.mean()), 2)}
    summary.update({f"p{p}": int(r) for p, r in zip(PERCENTILES, ranks)})
    summary["max"] = int(values.max())
    return summary


def _token_counts(tokenizer, texts: list[str]) -> list[int]:
    """Return the number of tokens of each text, without special tokens (one batched call)."""
    encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)
    return [len(ids) for ids in encoded["input_ids"]]


class _Tally:
    """Running counts over records; :meth:`finish` turns them into a :class:`DatasetStats`."""

    def __init__(self, tokenizer=None, batch_size: int = 1000):
        self.tokenizer, self.batch_size = tokenizer, batch_size
        self.shapes, self.sources, self.languages = Counter(), Counter(), Counter()
        self.turns, self.max_turns, self.multi_turn = 0, 0, 0
        self.keys = array("Q")  # 8-byte exact-dup digests: np.unique at the end, no set of objects
        self.prompt_chars, self.response_chars, self.tokens = array("q"), array("q"), array("q")
        self.pending: list[tuple[str, str]] = []

    def add(self, index: int, rec: dict) -> None:
        """Count one record (``index`` is its position, for the error message)."""
        try:
            shape = record_shape(rec)
        except (ValueError, TypeError) as e:
            raise MedtuneError(f"record {index + 1}: {e}") from None
        prompt, response = prompt_text(rec), response_text(rec)
        full = full_text(rec)
        self.shapes[shape] += 1
        if "source" in rec:
            self.sources[str(rec["source"])] += 1
        self.languages[detect_language(full)] += 1
        turns = turn_count(rec)
        self.turns, self.max_turns = self.turns + turns, max(self.max_turns, turns)
        self.multi_turn += turns > 1
        self.keys.append(int.from_bytes(exact_key(full), "little"))
        self.prompt_chars.append(len(prompt))
        self.response_chars.append(len(response))
        if self.tokenizer is not None:
            self.pending.append((prompt, response))
            if len(self.pending) >= self.batch_size:
                self._count_tokens()

    def _count_tokens(self) -> None:
        """Tokenize the pending prompts and responses in one call; store per-record sums."""
        if not self.pending:
            return
        counts = _token_counts(self.tokenizer, [t for pair in self.pending for t in pair])
        self.tokens.extend(p + r for p, r in zip(counts[::2], counts[1::2]))
        self.pending = []

    def finish(self) -> DatasetStats:
        """Return the summary and the raw lengths."""
        self._count_tokens()
        n = len(self.keys)
        duplicates = n - len(np.unique(np.frombuffer(self.keys, dtype=np.uint64)))
        lengths = {"prompt_chars": np.array(self.prompt_chars, dtype=np.int64),
                   "response_chars": np.array(self.response_chars, dtype=np.int64)}
        summary = {
            "records": n,
            "shapes": dict(self.shapes.most_common()),
            "sources": dict(self.sources.most_common()),
            "languages": dict(self.languages.most_common()),
            "turns": {"mean": round(self.turns / n, 2) if n else 0.0, "max": self.max_turns,
                      "multi_turn": self.multi_turn},
            "duplicates": {"exact": duplicates, "rate": round(duplicates / n, 4) if n else 0.0},
            "prompt_chars": length_summary(lengths["prompt_chars"]),
            "response_chars": length_summary(lengths["response_chars"]),
        }
        if self.tokenizer is not None:
            lengths["tokens"] = np.array(self.tokens, dtype=np.int64)
            summary["tokens"] = {"total": int(lengths["tokens"].sum()),
                                 **length_summary(lengths["tokens"])}
        return DatasetStats(summary, lengths)


def compute_stats(records: Iterable[dict], tokenizer=None, progress: bool = False,
                  batch_size: int = 1000) -> DatasetStats:
    """Return the statistics of ``records`` (see :class:`DatasetStats`) from one streaming pass.

    Duplicates are exact duplicates of the normalised full text
    (:func:`medtune.data.clean.dedup.exact_key`): the count is records minus distinct keys. Languages are
    :func:`medtune.data.clean.quality.detect_language` of the full text. With a ``tokenizer``, tokens are
    those of the prompt plus those of the response (no special tokens, no chat template), counted
    ``batch_size`` records at a time."""
    from tqdm.auto import tqdm

    tally = _Tally(tokenizer, batch_size)
    for index, rec in enumerate(tqdm(records, desc="stats", unit="rec", disable=not progress,
                                     delay=1)):
        tally.add(index, rec)
    return tally.finish()


# -------------------------------------------------------------------------------------- output


def _histogram(ax, values: np.ndarray, xlabel: str) -> None:
    """Draw a histogram of ``values`` on ``ax`` with p50 / p90 lines; counts on a log axis when
    the tallest bin is over 100× the smallest non-empty one (long tails stay visible)."""
    if len(values) == 0:
        ax.text(0.5, 0.5, "no records", ha="center", va="center", transform=ax.transAxes)
        return
    counts, edges = np.histogram(values, bins=min(50, max(1, int(values.max() - values.min()) + 1)))
    ax.stairs(counts, edges, fill=True, alpha=0.7)
    if counts.max() > 100 * counts[counts > 0].min():
        ax.set_yscale("log")
    for p, style in ((50, "--"), (90, ":")):
        at = np.percentile(values, p, method="inverted_cdf")
        ax.axvline(at, color="black", linestyle=style, label=f"p{p} = {int(at):,}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("records")
    ax.legend()


def plot_lengths(stats: DatasetStats, path) -> Path:
    """Write a PNG histogram of response lengths in characters (and tokens per record in a second
    panel when counted) to ``path``; return the path. Needs the :class:`DatasetStats` from
    :func:`compute_stats` itself (its raw lengths), not a dict read back from JSON."""
    from matplotlib.figure import Figure  # no pyplot: no global backend, no GUI

    lengths = getattr(stats, "lengths", None)
    if lengths is None:
        raise MedtuneError("plot_lengths needs the result of compute_stats (it keeps the raw lengths)")
    panels = [("response_chars", "response length (characters)")]
    if "tokens" in lengths:
        panels.append(("tokens", "tokens per record (prompt + response)"))
    fig = Figure(figsize=(6 * len(panels), 4), layout="constrained")
    for ax, (key, label) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        _histogram(ax, lengths[key], label)
    fig.suptitle(f"{stats['records']:,} records")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, format="png")
    return path


def _counts_line(counts: dict, n: int) -> str:
    """``a 70 (70.0%) · b 30 (30.0%)``, or ``-`` for none."""
    return " · ".join(f"{k} {v:,} ({100 * v / n:.1f}%)" for k, v in counts.items()) or "-"


def _length_rows(stats: dict) -> list[str]:
    """The length table: one row per length kind present."""
    rows = [f"{'':<16}{'mean':>10}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>10}"]
    for key, label in (("prompt_chars", "prompt chars"), ("response_chars", "response chars"),
                       ("tokens", "tokens")):
        s = stats.get(key)
        if s:
            cells = f"{s['mean']:>10,.1f}" + "".join(f"{s[p]:>9,}" for p in ("p50", "p90", "p99"))
            rows.append(f"{label:<16}{cells}{s['max']:>10,}")
    return rows


def format_stats(stats: dict) -> str:
    """Return ``stats`` as a plain-text table for the terminal."""
    n = stats["records"]
    if n == 0:
        return "records         0"
    dup, turns = stats["duplicates"], stats["turns"]
    lines = [
        f"{'records':<16}{n:,}",
        f"{'duplicates':<16}{dup['exact']:,} ({100 * dup['rate']:.2f}%, exact after normalising)",
        (f"{'user turns':<16}mean {turns['mean']:.2f} · max {turns['max']} · "
         f"multi-turn {turns['multi_turn']:,}"),
        f"{'shapes':<16}{_counts_line(stats['shapes'], n)}",
        f"{'languages':<16}{_counts_line(stats['languages'], n)}",
        f"{'sources':<16}{_counts_line(stats['sources'], n)}",
    ]
    if "tokens" in stats:
        lines.append(f"{'tokens':<16}{stats['tokens']['total']:,} in all (prompt + response)")
    return "\n".join(lines + [""] + _length_rows(stats))
