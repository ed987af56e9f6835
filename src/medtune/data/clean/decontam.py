"""Decontamination: find training records that contain evaluation (benchmark) questions.

Evaluation texts are cut into *units* (one per CJK character, one per latin word or number;
punctuation, spacing and case ignored) and every run of ``n`` consecutive units is indexed. A
training text that shares any indexed run has leaked a benchmark question. Scan a training set
with :meth:`NgramIndex.matches_many` (many texts per numpy pass, ~20k texts/s per core).

>>> index = build_index(["患者男，45岁，反复上腹痛3年，进食后缓解，最可能的诊断是什么？"])
>>> index.matches("题目：患者男, 45 岁，反复上腹痛3年，进食后缓解。最可能的诊断是什么") > 0
True
>>> index.first_match("题目：患者男, 45 岁，反复上腹痛3年，进食后缓解。")
'患者男, 45 岁,反复上腹痛3年,进食后缓解'
>>> index.matches("反复上腹痛3年的患者应做胃镜。")
0
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from medtune.data.clean.dedup import mix64
from medtune.data.readers.records import record_shape, response_text

__all__ = ["LONG_OPTION_UNITS", "NgramIndex", "build_index", "eval_texts", "units"]

# Han (with radicals, extensions A-H, compatibility), kana, bopomofo and hangul syllables
_CJK_RANGES = [
    (0x2E80, 0x2FDF),
    (0x3040, 0x30FF),
    (0x3100, 0x312F),
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xAC00, 0xD7AF),
    (0xF900, 0xFAFF),
    (0x20000, 0x323AF),
]
_TABLE_SIZE = 0x323B0  # code points above this (private use, tags) are never units
_POLY = np.uint64(0xFF51AFD7ED558CCD)
_BATCH_CHARS = 1 << 16  # training texts segmented and hashed together per numpy pass
LONG_OPTION_UNITS = 20  # options at least this long are indexed; shorter ones are generic


@functools.cache
def _unit_classes() -> np.ndarray:
    """Per code point: 2 = CJK letter (a unit by itself), 1 = other letter or digit (runs form a
    unit), 0 = dropped. Letters/digits are what ``str.isalnum`` says (what regex ``\\w`` uses)."""
    table = np.fromiter(
        (chr(c).isalnum() for c in range(_TABLE_SIZE)), dtype=bool, count=_TABLE_SIZE
    ).astype(np.uint8)
    for lo, hi in _CJK_RANGES:
        table[lo : hi + 1] *= 2
    table[-1] = 0  # where larger code points are clipped to
    return table


def _normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


def _segment(norm: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Code points of ``norm``, their classes, and the start and end offsets of its units."""
    codes = np.frombuffer(norm.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    classes = _unit_classes()[np.minimum(codes, _TABLE_SIZE - 1)]
    in_run = classes == 1
    before = np.concatenate([[False], in_run[:-1]])
    after = np.concatenate([in_run[1:], [False]])
    is_cjk = classes == 2
    starts = np.flatnonzero(is_cjk | (in_run & ~before))
    ends = np.flatnonzero(is_cjk | (in_run & ~after)) + 1
    return codes, classes, starts, ends


def units(text: str) -> list[str]:
    """The units of ``text`` after NFKC and lower-casing: each CJK character, and each run of
    other letters/digits (latin words, numbers, Greek letters); punctuation and spaces dropped.

    >>> units("COVID-19 患者，Ｔ细胞 ≥3.5%")
    ['covid', '19', '患', '者', 't', '细', '胞', '3', '5']
    """
    norm = _normalise(text)
    _, _, starts, ends = _segment(norm)
    return [norm[a:b] for a, b in zip(starts.tolist(), ends.tolist())]


def _unit_ids(codes: np.ndarray, classes: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """A 64-bit id per unit: a polynomial hash of its code points, mixed. Vectorised: one Python
    xxhash call per unit was the largest cost of scanning a training set."""
    if len(starts) == 0:
        return np.empty(0, dtype=np.uint64)
    is_start = np.zeros(len(codes), dtype=np.int64)
    is_start[starts] = 1
    unit_of = np.cumsum(is_start) - 1  # the unit each code point belongs to (or follows)
    offset = np.arange(len(codes)) - starts[np.maximum(unit_of, 0)]
    powers = np.full(int(offset.max()) + 1, _POLY, dtype=np.uint64)
    powers[0] = 1
    powers = np.multiply.accumulate(powers)  # _POLY ** i, wrapping mod 2**64
    terms = (codes.astype(np.uint64) + np.uint64(1)) * powers[np.maximum(offset, 0)]
    terms[classes == 0] = 0  # dropped characters between units add nothing
    return mix64(np.add.reduceat(terms, starts))


def _gram_keys(ids: np.ndarray, k: int) -> np.ndarray:
    """A 64-bit key for each run of ``k`` consecutive unit ids (salted by ``k``)."""
    if len(ids) < k:
        return np.empty(0, dtype=np.uint64)
    keys = np.full(len(ids) - k + 1, k, dtype=np.uint64)
    for j in range(k):
        keys = keys * _POLY + ids[j : len(ids) - k + 1 + j]
    return mix64(keys)


@dataclass
class _UnitBatch:
    """The units of several texts laid end to end (one numpy pass for many short texts)."""

    norm: str  # the normalised texts joined by "\n"
    ids: np.ndarray  # 64-bit id per unit
    text_of: np.ndarray  # which text each unit comes from
    starts: np.ndarray  # character span of each unit in ``norm``
    ends: np.ndarray
    size: int  # number of texts

    def grams(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Start unit and key of every ``k``-unit run that lies inside one text."""
        keys = _gram_keys(self.ids, k)
        inside = np.flatnonzero(self.text_of[: len(keys)] == self.text_of[k - 1 :])
        return inside, keys[inside]

    def units_per_text(self) -> np.ndarray:
        return np.bincount(self.text_of, minlength=self.size)


def _unit_batch(texts: list[str]) -> _UnitBatch:
    norms = [_normalise(t) for t in texts]
    norm = "\n".join(norms)  # "\n" is no unit character, so no unit spans two texts
    codes, classes, starts, ends = _segment(norm)
    first_char = np.cumsum([0] + [len(t) + 1 for t in norms[:-1]])
    text_of = np.searchsorted(first_char, starts, side="right") - 1
    ids = _unit_ids(codes, classes, starts)
    return _UnitBatch(norm, ids, text_of, starts, ends, len(texts))


def _unit_batches(texts: Iterable[str]) -> Iterator[_UnitBatch]:
    batch, chars = [], 0
    for text in texts:
        batch.append(text)
        chars += len(text)
        if chars >= _BATCH_CHARS:
            yield _unit_batch(batch)
            batch, chars = [], 0
    if batch:
        yield _unit_batch(batch)


class NgramIndex:
    """Keys of every ``n``-unit run of the evaluation texts added, in a Python set of ints.

    Each unit gets a 64-bit id and each run of units one 64-bit key (polynomial hashes finished
    with splitmix64, computed with numpy, the same in every process), so the index holds one int
    per distinct run (~100 bytes each in CPython: ~50 MB per 500k runs).

    Short texts: an evaluation text of ``min_units <= k < n`` units is stored as one whole-text
    key of length ``k``, and its length ``k`` is remembered. A training text is then also cut
    into ``k``-unit runs for each remembered short length (at most ``n - min_units`` lengths,
    each one vectorised pass), so a short question matches when it appears verbatim, units in
    order, inside a longer training text. Texts under ``min_units`` units are skipped (counted
    in ``skipped``): a 3-character question would match any text mentioning the same phrase.
    """

    def __init__(self, n: int = 13, min_units: int = 8):
        if not 1 <= min_units <= n:
            raise ValueError(f"need 1 <= min_units <= n (got min_units={min_units}, n={n})")
        self.n, self.min_units = n, min_units
        self.skipped = 0
        self._keys: set[int] = set()
        self._short_lengths: set[int] = set()
        self._filter: tuple[np.ndarray, np.uint64] | None = None

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, text: str) -> None:
        """Index the ``n``-unit runs of one evaluation text (or its whole-text key if short)."""
        self.add_many([text])

    def add_many(self, texts: Iterable[str]) -> None:
        """:meth:`add` for many texts, hashed many per numpy pass."""
        self._filter = None
        for batch in _unit_batches(texts):
            counts = batch.units_per_text()
            self.skipped += int((counts < self.min_units).sum())
            self._keys.update(batch.grams(self.n)[1].tolist())  # texts of >= n units only
            short = (counts >= self.min_units) & (counts < self.n)
            first_unit = np.cumsum(counts) - counts
            for length in np.unique(counts[short]).tolist():
                whole_text = first_unit[short & (counts == length)]
                self._keys.update(_gram_keys(batch.ids, length)[whole_text].tolist())
                self._short_lengths.add(length)

    def _prefilter(self) -> tuple[np.ndarray, np.uint64]:
        """A bit table (64 bits per key, rebuilt after adds) and the shift that maps a key to its
        bit: rejects ~98% of absent keys in numpy, before any set lookup."""
        if self._filter is None:
            bits = max(16, (len(self._keys) * 64).bit_length())
            keys = np.fromiter(self._keys, dtype=np.uint64, count=len(self._keys))
            slots = keys >> np.uint64(64 - bits)
            table = np.zeros(1 << (bits - 3), dtype=np.uint8)
            np.bitwise_or.at(
                table, slots >> np.uint64(3), np.uint8(1) << (slots & 7).astype(np.uint8)
            )
            self._filter = (table, np.uint64(64 - bits))
        return self._filter

    def _hits(self, batch: _UnitBatch) -> list[tuple[int, np.ndarray]]:
        """``(k, start units)`` of the indexed ``k``-unit runs found, for each length."""
        table, shift = self._prefilter()
        found = []
        for length in [self.n, *sorted(self._short_lengths)]:
            starts, keys = batch.grams(length)
            slots = keys >> shift
            maybe = np.flatnonzero((table[slots >> np.uint64(3)] >> (slots & 7)) & 1)
            if len(maybe) == 0:
                continue
            hit = [key in self._keys for key in keys[maybe].tolist()]
            found.append((length, starts[maybe[hit]]))
        return found

    def matches(self, text: str) -> int:
        """How many runs of ``text`` (n-unit runs and short-question runs) are in the index."""
        return int(self.matches_many([text])[0])

    def matches_many(self, texts: Iterable[str]) -> np.ndarray:
        """:meth:`matches` of each text (``int64``), many texts per numpy pass: use this one for
        a training set."""
        counts = []
        for batch in _unit_batches(texts):
            total = np.zeros(batch.size, dtype=np.int64)
            for _, starts in self._hits(batch):
                total += np.bincount(batch.text_of[starts], minlength=batch.size)
            counts.append(total)
        return np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)

    def first_match(self, text: str) -> str | None:
        """The first leaked span of ``text`` (NFKC, lower-cased, from the first to the last unit
        of the first stretch covered by matching runs), or None when nothing matches."""
        batch = _unit_batch([text])
        hits = self._hits(batch)
        if not hits:
            return None
        depth = np.zeros(len(batch.ids) + 1, dtype=np.int64)
        for length, starts in hits:
            np.add.at(depth, starts, 1)
            np.add.at(depth, starts + length, -1)
        covered = np.cumsum(depth)[:-1] > 0
        first = int(np.argmax(covered))
        last = first + int(np.argmin(np.append(covered[first:], False))) - 1
        return batch.norm[int(batch.starts[first]) : int(batch.ends[last])]


def build_index(texts: Iterable[str], n: int = 13, min_units: int = 8) -> NgramIndex:
    """An :class:`NgramIndex` of ``texts`` (use :func:`eval_texts` to pick them from records)."""
    index = NgramIndex(n=n, min_units=min_units)
    index.add_many(texts)
    return index


def _user_turns(messages: list[dict]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "user"]


def eval_texts(rec: dict) -> list[str]:
    """The strings of an evaluation record worth indexing, non-empty.

    choice: the context (a case or abstract is part of the item) and the question, plus options
    of at least :data:`LONG_OPTION_UNITS` units: long options are statements specific to the
    item, short ones ("阿司匹林", "Hypertension") are vocabulary every medical text shares.
    messages / prompt / preference / kto: the user turns; system prompts are shared templates,
    and answers are not what a leaked question looks like. text: the text.
    """
    shape = record_shape(rec)
    if shape == "choice":
        options = [o for o in rec["options"].values() if len(units(o)) >= LONG_OPTION_UNITS]
        texts = [rec.get("context") or "", rec["question"], *options]
    elif shape == "messages":
        texts = _user_turns(rec["messages"])
    elif shape == "text":
        texts = [response_text(rec)]
    else:
        texts = _user_turns(rec["prompt"])
    return [t for t in texts if t]
