"""A sampling schedule over several training sources: which rows a mixed stage trains, in order.

A stage with ``data.mixture`` trains ``total`` samples drawn from its sources (the ``data.train``
entries) by share. The run is cut into phases; each phase takes its samples from the sources in
exact proportion to that phase's weights (largest-remainder rounding, as ``data mix`` does) and
shuffles them. ``constant`` uses one set of weights for every phase; ``anneal`` moves linearly
from the first weights (first phase) to the final ones (last phase), e.g. from domain text toward
instructions, as HuatuoGPT-II's one-stage adaptation does. Each source is read in shuffled passes:
every row of a source is seen once before any is seen again.

Example::

    >>> plan = mixture_order([3, 5], [0.8, 0.2], [0.2, 0.8], phases=2, total=10, seed=0)
    >>> [p["counts"] for p in plan.phases]
    [[4, 1], [1, 4]]
    >>> len(plan.order)
    10
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from medtune.data.mixing import largest_remainder
from medtune.errors import MedtuneError

__all__ = ["MixturePlan", "mixture_order", "phase_weights"]


@dataclass
class MixturePlan:
    """The rows a mixed stage trains, in order, and what each phase and epoch drew."""

    order: np.ndarray  # row index (into the concatenated source rows) of every sample, in training order
    source_of: np.ndarray  # source index of every sample
    phases: list[dict] = field(default_factory=list)  # {"samples", "weights", "counts"} per phase
    epochs: list[list[int]] = field(default_factory=list)  # samples per source in each epoch-sized window


def phase_weights(start, end, phases: int) -> list[list[Fraction]]:
    """Return each phase's normalised shares: ``start`` in the first phase, ``end`` in the last,
    linear in between (``end`` None: ``start`` in every phase)."""
    start = _normalised(start)
    end = _normalised(end) if end else start
    if phases == 1:
        return [start]
    out = []
    for p in range(phases):
        t = Fraction(p, phases - 1)
        out.append([a + (b - a) * t for a, b in zip(start, end)])
    return out


def _normalised(weights) -> list[Fraction]:
    raw = [Fraction(repr(float(w))) for w in weights]
    total = sum(raw)
    if total <= 0:
        raise MedtuneError("mixture weights: all weights are 0")
    return [w / total for w in raw]


def _phase_sizes(total: int, phases: int) -> list[int]:
    """``total`` samples cut into ``phases`` nearly equal parts (earlier phases take the rest)."""
    base, rest = divmod(total, phases)
    return [base + (p < rest) for p in range(phases)]


class _Passes:
    """Rows of one source in shuffled passes: every row once before any row twice."""

    def __init__(self, rows: np.ndarray, rng: np.random.Generator):
        self.rows, self.rng, self.queue = rows, rng, np.zeros(0, dtype=np.int64)

    def take(self, k: int) -> np.ndarray:
        while len(self.queue) < k:
            self.queue = np.concatenate([self.queue, self.rng.permutation(self.rows)])
        taken, self.queue = self.queue[:k], self.queue[k:]
        return taken


def mixture_order(rows_per_source, start, end, phases: int, total: int, seed: int,
                  epoch_size: int | None = None) -> MixturePlan:
    """Return the training order of ``total`` samples over sources holding ``rows_per_source``
    rows (laid out one source after another, as a stage's tokenized rows are by ``bucket``).

    ``start`` / ``end``: one weight per source (``end`` None or empty: constant); ``phases``: how
    many steps the weights move in (constant: 1 is enough). ``epoch_size`` (default: all rows of
    all sources) cuts the order into epoch windows whose per-source counts the plan records."""
    if total < 1:
        raise MedtuneError(f"mixture: nothing to train ({total} samples)")
    n = len(rows_per_source)
    if len(start) != n or (end and len(end) != n):
        raise MedtuneError(f"mixture: one weight per source ({n}) is needed")
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(rows_per_source)]).astype(np.int64)
    streams = [_Passes(np.arange(offsets[i], offsets[i + 1], dtype=np.int64), rng) for i in range(n)]
    phases = min(phases, total) if end else 1
    order, source_of, records = [], [], []
    for size, shares in zip(_phase_sizes(total, phases), phase_weights(start, end, phases)):
        counts = largest_remainder(size, dict(enumerate(shares)))
        empty = [i for i, k in counts.items() if k and rows_per_source[i] == 0]
        if empty:
            raise MedtuneError(f"mixture: source {empty[0]} has no training rows but a weight > 0")
        picks = [streams[i].take(counts[i]) for i in range(n)]
        ids = np.repeat(np.arange(n, dtype=np.int32), [len(p) for p in picks])
        shuffle = rng.permutation(size)
        order.append(np.concatenate(picks)[shuffle])
        source_of.append(ids[shuffle])
        records.append({"samples": size, "weights": [round(float(s), 6) for s in shares],
                        "counts": [counts[i] for i in range(n)]})
    plan = MixturePlan(np.concatenate(order), np.concatenate(source_of), records)
    window = epoch_size or int(offsets[-1]) or total
    for at in range(0, total, window):
        plan.epochs.append(np.bincount(plan.source_of[at:at + window], minlength=n).tolist())
    return plan
