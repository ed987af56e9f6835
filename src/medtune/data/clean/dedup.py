"""Duplicate detection: exact (normalised text) and near-duplicate (MinHash LSH).

Exact duplicates share :func:`exact_key`. Near duplicates share most character 5-grams of
:func:`normalize_text`: :class:`MinHasher` turns each text into a ``uint32`` signature (in any
process: nothing depends on Python's ``hash()``) and :func:`near_duplicates` finds, through LSH
band buckets, the records whose signature agrees with an earlier kept record's on at least
``threshold`` of its positions.

>>> exact_key("Hello,  World!") == exact_key("hello world")
True
>>> hasher = MinHasher(num_perm=128)
>>> sigs = hasher.signatures(["高血压患者应低盐饮食，每日食盐不超过五克，并规律服药。",
...                           "高血压患者应低盐饮食，每日食盐不超过五克，并规律服药！",
...                           "糖尿病患者需要监测血糖，按时注射胰岛素。"])
>>> near_duplicates(sigs, threshold=0.8).tolist()
[False, True, False]
"""

from __future__ import annotations

import functools
import re
import unicodedata

import numpy as np
import xxhash

__all__ = [
    "MinHasher",
    "band_keys",
    "estimate_jaccard",
    "exact_key",
    "jaccard",
    "lsh_params",
    "mix64",
    "near_duplicates",
    "normalize_text",
]

_NOISE = re.compile(r"[\W_]+", re.UNICODE)
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_POLY = np.uint64(0xFF51AFD7ED558CCD)  # odd multiplier for polynomial hashes of sequences
EMPTY_SIGNATURE_VALUE = 0xFFFFFFFF
_BATCH_CHARS = 1 << 16  # texts normalised and hashed together per numpy pass
_MATRIX_BUDGET = 1 << 18  # shingles x permutations per temporary (2 MiB: stays in cache)
_ROW_BLOCK = 1 << 16  # signature rows read at a time (memmaps stay out of memory)


def normalize_text(text: str) -> str:
    """NFKC, lower-cased, with whitespace and punctuation removed: what exact dedup compares."""
    return _NOISE.sub("", unicodedata.normalize("NFKC", text).lower())


def exact_key(text: str) -> bytes:
    """An 8-byte digest of :func:`normalize_text` (collisions ~1 in 2**64 per pair)."""
    return xxhash.xxh64_digest(normalize_text(text).encode("utf-8"))


def mix64(values: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser of a ``uint64`` array: a well-mixed, process-independent hash."""
    z = np.asarray(values, dtype=np.uint64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _shingles(norm: str, ngram: int) -> set[str]:
    if len(norm) < ngram:
        return {norm} if norm else set()
    return {norm[i : i + ngram] for i in range(len(norm) - ngram + 1)}


def jaccard(text_a: str, text_b: str, ngram: int = 5) -> float:
    """Exact Jaccard similarity of the character-``ngram`` shingle sets of the normalised texts
    (what a MinHash signature estimates); 1.0 when both are empty."""
    a = _shingles(normalize_text(text_a), ngram)
    b = _shingles(normalize_text(text_b), ngram)
    return len(a & b) / len(a | b) if a or b else 1.0


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """The fraction of positions where two MinHash signatures agree: the Jaccard estimate."""
    return float(np.mean(np.asarray(sig_a) == np.asarray(sig_b)))


class MinHasher:
    """MinHash signatures of texts: ``num_perm`` minima of hashed character ``ngram`` shingles.

    Shingles are the character n-grams of :func:`normalize_text`; a text shorter than ``ngram``
    is one shingle (the whole text). An empty text gets the all-``0xFFFFFFFF`` signature: two
    empty texts agree everywhere (they are exact duplicates anyway), while a non-empty text
    would need every minimum to be the largest ``uint32``, which does not happen in practice.

    Each shingle is hashed (polynomial over its code points, then :func:`mix64`) to 64 bits; the
    ``num_perm`` permutations are the multiply-add-shift family ``(a*h + b) mod 2**64 >> 32``
    with odd ``a``. All parameters come from ``seed`` through splitmix64, so every process
    computes the same signatures.
    """

    def __init__(self, num_perm: int = 128, ngram: int = 5, seed: int = 1):
        if num_perm < 1 or ngram < 1:
            raise ValueError(f"num_perm and ngram must be >= 1 (got {num_perm}, {ngram})")
        self.num_perm, self.ngram, self.seed = num_perm, ngram, seed
        base = np.uint64((seed * _GOLDEN) & _MASK64)
        params = mix64(np.arange(1, 2 * num_perm + 1, dtype=np.uint64) * np.uint64(_GOLDEN) + base)
        self._mul = params[:num_perm] | np.uint64(1)
        self._add = params[num_perm:]

    def signature(self, text: str) -> np.ndarray:
        """The ``uint32`` signature, shape ``(num_perm,)``, of one text."""
        return self._batch_signatures([normalize_text(text)])[0]

    def signatures(self, texts: list[str]) -> np.ndarray:
        """The ``uint32`` signatures, shape ``(len(texts), num_perm)``; same rows as
        :meth:`signature` but hashed many texts per numpy pass."""
        out = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        batch, chars, first = [], 0, 0
        for i, text in enumerate(texts):
            batch.append(normalize_text(text))
            chars += len(batch[-1])
            if chars >= _BATCH_CHARS:
                out[first : i + 1] = self._batch_signatures(batch)
                batch, chars, first = [], 0, i + 1
        if batch:
            out[first:] = self._batch_signatures(batch)
        return out

    def _batch_signatures(self, norms: list[str]) -> np.ndarray:
        # surrogatepass keeps one 4-byte unit per code point even for stray surrogates
        joined = "".join(norms).encode("utf-32-le", "surrogatepass")
        codes = np.frombuffer(joined, dtype=np.uint32)
        lengths = np.fromiter(map(len, norms), dtype=np.int64, count=len(norms))
        hashes, counts = self._shingle_hashes(codes, lengths)
        return self._minima(hashes, counts)

    def _shingle_hashes(self, codes: np.ndarray, lengths: np.ndarray):
        """64-bit hashes of every shingle of the concatenated texts, and the count per text."""
        n = self.ngram
        counts = np.where(lengths >= n, lengths - n + 1, np.minimum(lengths, 1))
        text_starts = np.cumsum(lengths) - lengths
        first_shingle = np.cumsum(counts) - counts
        total = int(counts.sum())
        starts = np.arange(total) + np.repeat(text_starts - first_shingle, counts)
        widths = np.repeat(np.minimum(lengths, n), counts).astype(np.uint64)
        padded = np.concatenate([codes.astype(np.uint64) + np.uint64(1), np.zeros(n, np.uint64)])
        hashes = widths.copy()  # the width salts a whole short text apart from an n-gram
        all_full = total == 0 or int(widths.min()) == n
        for j in range(n):
            step = hashes * _POLY + padded[starts + j]
            hashes = step if all_full else np.where(widths > j, step, hashes)
        return mix64(hashes), counts

    def _minima(self, hashes: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Per text, the minimum over its shingles of each permuted hash (top 32 bits)."""
        sigs = np.full((len(counts), self.num_perm), EMPTY_SIGNATURE_VALUE, dtype=np.uint32)
        has_shingles = counts > 0
        if not has_shingles.any():
            return sigs
        offsets = np.cumsum(counts[has_shingles]) - counts[has_shingles]
        minima = np.empty((self.num_perm, len(offsets)), dtype=np.uint64)
        # a few permutations per pass keep the (perms x shingles) temporary in cache, and
        # reducing along contiguous rows is ~8x faster than along the strided axis
        step = max(1, _MATRIX_BUDGET // len(hashes))
        buffer = np.empty((min(step, self.num_perm), len(hashes)), dtype=np.uint64)
        for lo in range(0, self.num_perm, step):
            hi = min(lo + step, self.num_perm)
            permuted = buffer[: hi - lo]
            np.multiply(self._mul[lo:hi, None], hashes, out=permuted)
            permuted += self._add[lo:hi, None]
            np.minimum.reduceat(permuted, offsets, axis=1, out=minima[lo:hi])
        # the top 32 bits of the minimum are the minimum of the top 32 bits
        sigs[has_shingles] = (minima.T >> np.uint64(32)).astype(np.uint32)
        return sigs


@functools.lru_cache(maxsize=64)
def lsh_params(
    threshold: float,
    num_perm: int,
    false_positive_weight: float = 0.5,
    false_negative_weight: float = 0.5,
) -> tuple[int, int]:
    """The ``(bands, rows)``, ``bands * rows <= num_perm``, minimising the weighted sum of the
    false-positive area (similarity below ``threshold`` yet sharing a band) and false-negative
    area (above it yet sharing none) under the S-curve ``1 - (1 - s**rows)**bands``; the
    datasketch ``_optimal_param`` rule, integrated with the trapezoid rule on a fine grid."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    pairs = [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]
    bands = np.array([p[0] for p in pairs], dtype=np.float64)[:, None]
    rows = np.array([p[1] for p in pairs], dtype=np.float64)[:, None]
    below = np.linspace(0.0, threshold, 1025)
    above = np.linspace(threshold, 1.0, 1025)
    false_pos = np.trapezoid(1.0 - (1.0 - below**rows) ** bands, below, axis=1)
    false_neg = np.trapezoid((1.0 - above**rows) ** bands, above, axis=1)
    error = false_positive_weight * false_pos + false_negative_weight * false_neg
    return pairs[int(np.argmin(error))]  # argmin keeps the first (fewest bands) on ties


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One ``uint64`` hash per LSH band, shape ``(n, bands)``: band ``k`` hashes signature
    columns ``k*rows .. (k+1)*rows - 1``. Equal bands give equal keys; unequal ones collide with
    probability ~2**-64."""
    if bands * rows > signatures.shape[1]:
        raise ValueError(f"{bands} bands x {rows} rows > {signatures.shape[1]} signature columns")
    cols = np.asarray(signatures[:, : bands * rows], dtype=np.uint64)
    cols = cols.reshape(len(cols), bands, rows)
    keys = np.full((len(cols), bands), rows, dtype=np.uint64)
    for r in range(rows):
        keys = keys * _POLY + cols[:, :, r]
    return mix64(keys)


def _active_band_keys(signatures, active: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Band keys of the active rows only, read a block of rows at a time."""
    blocks = []
    for lo in range(0, len(active), _ROW_BLOCK):
        block_active = active[lo : lo + _ROW_BLOCK]
        if block_active.any():
            block = np.asarray(signatures[lo : lo + _ROW_BLOCK])[block_active]
            blocks.append(band_keys(block, bands, rows))
    return np.concatenate(blocks) if blocks else np.empty((0, bands), np.uint64)


def _bucket_pairs(column: np.ndarray, neighbours: int) -> np.ndarray:
    """``(earlier, later)`` positions sharing a key in one band column: each bucket member is
    paired with the bucket's first member and with up to ``neighbours`` members just before it."""
    order = np.argsort(column, kind="stable")  # stable: a bucket lists members in record order
    sorted_keys = column[order]
    same = sorted_keys[1:] == sorted_keys[:-1]
    later = np.flatnonzero(same) + 1  # sorted positions that have a predecessor in their bucket
    if len(later) == 0:
        return np.empty((0, 2), np.int64)
    is_start = np.concatenate([[True], ~same])
    bucket_start = np.maximum.accumulate(np.where(is_start, np.arange(len(order)), 0))[later]
    found = [np.stack([order[bucket_start], order[later]], axis=1)]
    for back in range(1, neighbours + 1):
        near = later[later - back > bucket_start]
        found.append(np.stack([order[near - back], order[near]], axis=1))
    return np.concatenate(found)


def _agreement(signatures, pairs: np.ndarray) -> np.ndarray:
    """Signature agreement fraction of each ``(i, j)`` row pair, reading only those rows."""
    out = np.empty(len(pairs), dtype=np.float64)
    for lo in range(0, len(pairs), _ROW_BLOCK):
        chunk = pairs[lo : lo + _ROW_BLOCK]
        left = np.asarray(signatures[chunk[:, 0]])
        right = np.asarray(signatures[chunk[:, 1]])
        out[lo : lo + len(chunk)] = (left == right).mean(axis=1)
    return out


def _drop_later(pairs: np.ndarray, n: int) -> np.ndarray:
    """Greedy in record order: a record is dropped when a verified earlier partner is kept."""
    dropped = np.zeros(n, dtype=bool)
    if len(pairs) == 0:
        return dropped
    pairs = pairs[np.lexsort((pairs[:, 0], pairs[:, 1]))]
    later, first = np.unique(pairs[:, 1], return_index=True)
    ends = np.append(first[1:], len(pairs))
    earlier = pairs[:, 0]
    for j, lo, hi in zip(later.tolist(), first.tolist(), ends.tolist()):
        # partners are earlier records, so their fate is already final
        if not dropped[earlier[lo:hi]].all():
            dropped[j] = True
    return dropped


def near_duplicates(
    signatures: np.ndarray,
    threshold: float = 0.8,
    keep: np.ndarray | None = None,
    neighbours: int = 8,
) -> np.ndarray:
    """A bool per record: True when it is a near duplicate of an EARLIER kept record.

    Candidates share at least one LSH band key (:func:`lsh_params`, :func:`band_keys`; buckets
    found by sorting each band column); a candidate pair counts when the signatures agree on
    ``>= threshold`` of positions. Records are decided in order and only against records that
    stay (representative = earliest kept), so for a chain A~B~C with A and C dissimilar, B is
    dropped and C is kept: nothing drifts along a chain, and the result does not depend on how
    the work was split. Within a bucket each member is checked against the bucket's first
    member and its ``neighbours`` predecessors, which bounds the work on huge clusters (all
    pairs for buckets of up to ``neighbours + 2``).

    ``keep`` (optional bool per record): False marks records already dropped for other reasons;
    they take no part and are reported False. ``signatures`` may be an ``np.memmap``: band keys
    read it a block at a time and verification reads only candidate rows.
    """
    n, num_perm = signatures.shape
    active = np.ones(n, dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    if active.shape != (n,):
        raise ValueError(f"keep has shape {active.shape}, expected ({n},)")
    bands, rows = lsh_params(threshold, num_perm)
    keys = _active_band_keys(signatures, active, bands, rows)
    record_of = np.flatnonzero(active)
    found = [record_of[_bucket_pairs(keys[:, band], neighbours)] for band in range(bands)]
    pairs = np.concatenate(found) if found else np.empty((0, 2), np.int64)
    codes = np.unique(pairs[:, 0] * n + pairs[:, 1])  # the same pair from several bands: once
    pairs = np.stack([codes // n, codes % n], axis=1)
    pairs = pairs[_agreement(signatures, pairs) >= threshold]
    return _drop_later(pairs, n)
