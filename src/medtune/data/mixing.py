"""Mix JSONL sources by weight and split one into train / validation, in bounded memory.

Both work on numpy arrays of line byte offsets (8 bytes a record) and small per-record numbers,
never on a list of records, so a million-record file costs a few MB however long its records are.

Example (the ``medtune data mix`` / ``medtune data split`` commands call these)::

    from medtune.data.mixing import mix, split
    summary = mix({"general": "general.jsonl", "med": "med.jsonl"}, {"general": 0.3, "med": 0.7},
                  total=10_000, seed=0, out_path="mix.jsonl")
    split("mix.jsonl", "data/", val=0.05, seed=0)        # data/train.jsonl, data/validation.jsonl

>>> mix_plan({"general": 1000, "med": 300}, {"general": 0.5, "med": 0.5}, None)
{'general': 300, 'med': 300}
>>> mix_plan({"general": 1000, "med": 300}, {"general": 0.7, "med": 0.3}, total=2000)
{'general': 1400, 'med': 600}
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from fractions import Fraction
from pathlib import Path

import numpy as np

from medtune.errors import MedtuneError, did_you_mean, where
from medtune.files import JsonLineError, atomic_output, parse_json_object

__all__ = ["line_offsets", "mix", "mix_plan", "read_lines_at", "sample_indices", "split"]

_CHUNK = 1 << 22  # 4 MiB reads: large enough for numpy to dominate, small enough to stay cache-warm
_BOM = b"\xef\xbb\xbf"
_JSON_SPACE = b" \t\r\n"


# ---------------------------------------------------------------------------- offsets and reads


def _open_binary(path: Path):
    """Open ``path`` for binary reading, or raise a MedtuneError a user can act on."""
    try:
        return open(path, "rb")
    except IsADirectoryError:
        raise MedtuneError(f"{path}: is a directory, not a data file") from None
    except FileNotFoundError:
        raise MedtuneError(f"{path}: no such file") from None
    except OSError as e:
        raise MedtuneError(f"{path}: cannot read ({e.strerror or e})") from None


def _has_content(line: bytes) -> bool:
    """True when ``line`` has a byte that is not JSON whitespace."""
    return bool(line.strip(_JSON_SPACE))


def _chunk_lines(data: bytes, newlines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (start, has_content) of each line ending at ``newlines`` in ``data``; the first line
    may have begun in an earlier chunk (its start here is 0, its content checked by the caller)."""
    starts = np.empty(len(newlines), dtype=np.int64)
    starts[0] = 0
    starts[1:] = newlines[:-1] + 1
    # A JSONL line nearly always starts with "{": only lines starting with whitespace (blank
    # ones among them) need a closer look, so the per-line Python work is rare.
    first = np.frombuffer(data, dtype=np.uint8)[starts]
    has_content = (first != 32) & (first != 9) & (first != 13) & (first != 10)
    for i in np.flatnonzero(~has_content).tolist():
        has_content[i] = _has_content(data[starts[i]:newlines[i]])
    return starts, has_content


def line_offsets(path) -> np.ndarray:
    """Return the byte offset (int64) of every non-blank line of ``path``, in file order.

    Streams the file in 4 MiB chunks (any line length, ``\\n`` or ``\\r\\n`` endings); a UTF-8 BOM
    is skipped so the first offset points at the JSON itself. Newlines are found with numpy, so
    millions of lines a second."""
    found: list[np.ndarray] = []
    with _open_binary(Path(path)) as f:
        base = 3 if f.read(3) == _BOM else 0
        f.seek(base)
        line_start, line_has_content = base, False
        while data := f.read(_CHUNK):
            newlines = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
            if len(newlines) == 0:
                line_has_content = line_has_content or _has_content(data)
                base += len(data)
                continue
            starts, has_content = _chunk_lines(data, newlines)
            has_content[0] = line_has_content or _has_content(data[: newlines[0]])
            starts += base
            starts[0] = line_start
            found.append(starts[has_content])
            line_start = base + int(newlines[-1]) + 1
            line_has_content = _has_content(data[newlines[-1] + 1:])
            base += len(data)
    if line_has_content:  # a last line without a final newline
        found.append(np.array([line_start], dtype=np.int64))
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def _line_number(path: Path, offset: int) -> int:
    """Return the 1-based line number of the line starting at byte ``offset`` (only for errors)."""
    newlines = 0
    with open(path, "rb") as f:
        while offset > 0 and (data := f.read(min(_CHUNK, offset))):
            newlines += data.count(b"\n")
            offset -= len(data)
    return newlines + 1


def _parse_record(line: bytes, path: Path, line_of) -> dict:
    """Return the JSON object on ``line``; ``line_of()`` gives its line number for the error
    (counted only then: the mix reads lines by byte offset)."""
    try:
        return parse_json_object(line)
    except JsonLineError as e:
        raise JsonLineError(e.reason, where(path, line_of())) from None


def read_lines_at(path, offsets) -> Iterator[dict]:
    """Yield the JSON object on the line starting at each byte offset, in the order given.

    Raises MedtuneError naming ``file:line`` for a line that is not a JSON object."""
    path = Path(path)
    with _open_binary(path) as f:
        for offset in offsets:
            offset = int(offset)
            f.seek(offset)
            yield _parse_record(f.readline(), path, lambda o=offset: _line_number(path, o))


# ---------------------------------------------------------------------------------- mix plan


def _share(name: str, weight) -> Fraction:
    """Return ``weight`` as an exact fraction (0.7 is 7/10, not the nearest binary float)."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
        raise MedtuneError(f"weights: '{name}' must be a number ≥ 0, got {weight!r}")
    if weight == float("inf"):
        raise MedtuneError(f"weights: '{name}' must be finite")
    # repr() is the shortest decimal that round-trips, i.e. what the user typed.
    return Fraction(repr(weight)) if isinstance(weight, float) else Fraction(weight)


def _shares(counts: Mapping[str, int], weights: Mapping[str, float]) -> dict[str, Fraction]:
    """Return each source's normalised share of the output (exact fractions summing to 1)."""
    for name in weights:
        if name not in counts:
            raise MedtuneError(f"weights: no source named '{name}'" + did_you_mean(name, counts))
    missing = [name for name in counts if name not in weights]
    if missing:
        raise MedtuneError(f"weights: no weight for source(s) {', '.join(missing)}")
    raw = {name: _share(name, weights[name]) for name in counts}
    if sum(raw.values()) == 0:
        raise MedtuneError("weights: all weights are 0")
    return {name: w / sum(raw.values()) for name, w in raw.items()}


def largest_remainder(total: int, shares: Mapping[str, Fraction]) -> dict[str, int]:
    """Return integer parts of ``total`` proportional to ``shares`` (summing to 1) that add up to
    exactly ``total``: floors first, then one more each to the largest remainders (ties: earlier
    key first), so the result is deterministic."""
    quotas = {name: total * share for name, share in shares.items()}
    parts = {name: int(q) for name, q in quotas.items()}  # quotas ≥ 0, so int() is floor
    order = sorted(quotas, key=lambda name: -(quotas[name] - parts[name]))  # stable: ties by order
    for name in order[: total - sum(parts.values())]:
        parts[name] += 1
    return parts


def _limit_total(counts: Mapping[str, int], shares: Mapping[str, Fraction]) -> int:
    """Return the largest output size at which no source with a share is upsampled."""
    limits = {name: int(counts[name] / share) for name, share in shares.items() if share > 0}
    empty = [name for name, limit in limits.items() if counts[name] == 0]
    if empty:
        raise MedtuneError(f"source {empty[0]} has no records but a weight > 0")
    return min(limits.values())


def mix_plan(counts: Mapping[str, int], weights: Mapping[str, float] | None,
             total: int | None = None) -> dict[str, int]:
    """Return how many records to take from each source (in the order of ``counts``).

    - ``weights`` are relative shares of the output, normalised to sum to 1 (``{a: 7, b: 3}`` is
      ``{a: 0.7, b: 0.3}``); every source needs one; 0 leaves a source out.
    - With ``total`` the output has exactly ``total`` records split by weight (largest-remainder
      rounding); a source asked for more than it has is upsampled in whole passes.
    - Without ``total`` nothing is upsampled: the source that limits the mix is taken whole and the
      others are downsampled to match the weights.
    - Without ``weights``: every record of every source (concatenation), or with ``total`` each
      source keeps its natural share (``count / sum of counts``)."""
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 1):
        raise MedtuneError(f"total must be a whole number ≥ 1, got {total!r}")
    if weights is None:
        if total is None:
            return dict(counts)
        if sum(counts.values()) == 0:
            raise MedtuneError("every source is empty")
        weights = counts
    shares = _shares(counts, weights)
    plan = largest_remainder(total if total is not None else _limit_total(counts, shares), shares)
    empty = [name for name, k in plan.items() if k > 0 and counts[name] == 0]
    if empty:
        raise MedtuneError(f"source {empty[0]} has no records but a weight > 0")
    return plan


def sample_indices(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Return ``k`` indices into ``range(n)``, sorted ascending (file order).

    ``k ≤ n``: without replacement. ``k > n``: every index ``k // n`` times plus ``k % n`` distinct
    random ones, so each record appears either q or q + 1 times (upsampling repeats whole passes)."""
    if k > 0 and n == 0:
        raise MedtuneError(f"cannot take {k} records from an empty source")
    passes, rest = divmod(k, n) if n else (0, 0)
    picks = [np.tile(np.arange(n, dtype=np.int64), passes), rng.choice(n, rest, replace=False)]
    return np.sort(np.concatenate(picks).astype(np.int64))


# ---------------------------------------------------------------------------------------- mix


def _check_output(out_path: Path, inputs) -> None:
    """Refuse to write over an input (we read from the inputs while writing the output)."""
    if out_path.exists() and any(out_path.resolve() == Path(p).resolve() for p in inputs):
        raise MedtuneError(f"{out_path}: is also an input; choose another output path")


def _source_line(line: bytes, record: dict, name: str) -> bytes:
    """Return the JSON ``line`` (already parsed as ``record``) with ``"source": name`` added before
    its closing brace, unless it already names a source (kept, so mixing an earlier mix keeps the
    original sources). The rest of the line is copied byte for byte: no re-serialising, which
    would double the cost and rewrite numbers and escapes."""
    body = line.rstrip(_JSON_SPACE)
    if "source" in record:
        return body + b"\n"
    field = b'"source": ' + json.dumps(name, ensure_ascii=False).encode("utf-8")
    return body[:-1] + (b", " if record else b"") + field + b"}\n"


def _plan_picks(offsets: list[np.ndarray], plan: list[int], rng, shuffle: bool):
    """Return (source ids, byte offsets) of every output record, in output order."""
    picks = [offs[sample_indices(len(offs), k, rng)] for offs, k in zip(offsets, plan)]
    source_ids = np.repeat(np.arange(len(picks), dtype=np.int32), [len(p) for p in picks])
    chosen = np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)
    if shuffle:
        order = rng.permutation(len(chosen))
        source_ids, chosen = source_ids[order], chosen[order]
    return source_ids, chosen


def _pairs(source_ids: np.ndarray, chosen: np.ndarray, block: int = 1 << 16):
    """Yield ``(source id, offset)`` as Python ints, converting a block at a time (a million-item
    ``tolist()`` would cost ~60 MB of int objects)."""
    for start in range(0, len(chosen), block):
        yield from zip(source_ids[start:start + block].tolist(), chosen[start:start + block].tolist())


def _write_mix(paths: list[Path], names: list[str], source_ids, chosen, out_path: Path,
               progress: bool) -> None:
    """Write the chosen records (each with its ``source``) to ``out_path``, via a temporary file so
    a failed run leaves no half-written output."""
    from tqdm.auto import tqdm

    files = [_open_binary(p) for p in paths]
    try:
        with atomic_output(out_path) as tmp, open(tmp, "wb") as out:
            for sid, offset in tqdm(_pairs(source_ids, chosen), total=len(chosen), desc="mixing",
                                    unit="rec", disable=not progress, delay=1):
                f, path = files[sid], paths[sid]
                f.seek(offset)
                line = f.readline()
                record = _parse_record(line, path, lambda p=path, o=offset: _line_number(p, o))
                out.write(_source_line(line, record, names[sid]))
    finally:
        for f in files:
            f.close()


def mix(sources: Mapping[str, str | Path], weights: Mapping[str, float] | None, total: int | None,
        seed: int, out_path, shuffle: bool = True, progress: bool = False) -> dict:
    """Write a weighted mix of JSONL ``sources`` (name → path) to ``out_path``; return its summary.

    How many records each source gives is :func:`mix_plan`; which ones is :func:`sample_indices`
    with a ``numpy`` generator seeded by ``seed`` (sources drawn in the order given), so the output
    is the same for the same inputs, weights, total and seed. Every record gets ``"source": name``
    unless it already has a ``source`` (kept); lines are otherwise copied as they are. ``shuffle``: a seeded random order over all picks;
    otherwise sources in the order given, each in file order. Only the records taken are parsed.

    Returns ``{"sources": {name: {"available", "taken", "upsampled"}}, "total", "seed",
    "weights"}`` (weights normalised, or None) — the CLI saves it as ``OUT.mix.json``."""
    if not sources:
        raise MedtuneError("mix: no sources given")
    names, paths, out_path = list(sources), [Path(p) for p in sources.values()], Path(out_path)
    _check_output(out_path, paths)
    offsets = [line_offsets(p) for p in paths]
    counts = {name: len(offs) for name, offs in zip(names, offsets)}
    plan = mix_plan(counts, weights, total)
    rng = np.random.default_rng(seed)
    source_ids, chosen = _plan_picks(offsets, [plan[n] for n in names], rng, shuffle)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _write_mix(paths, names, source_ids, chosen, out_path, progress)
    shares = _shares(counts, weights) if weights is not None else None
    return {
        "sources": {name: {"available": counts[name], "taken": plan[name],
                           "upsampled": plan[name] > counts[name]} for name in names},
        "total": len(chosen),
        "seed": seed,
        "weights": {n: round(float(s), 6) for n, s in shares.items()} if shares else None,
    }


# -------------------------------------------------------------------------------------- split

_NO_GROUP = "(none)"


def _group_label(record: dict, stratify: str | None) -> str:
    """Return the stratification group of ``record``: the value of its ``stratify`` key as text,
    or ``(none)`` when the key is absent (or no key is used)."""
    if stratify is None or stratify not in record:
        return _NO_GROUP
    value = record[stratify]
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


def _iter_lines(f) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line number, line)`` for each non-blank line of a binary file, BOM removed."""
    for number, line in enumerate(f, 1):
        if number == 1 and line.startswith(_BOM):
            line = line[3:]
        if _has_content(line):
            yield number, line


def _content_hash(record: dict) -> int:
    """A 63-bit hash of a record's content: its fields but ``source`` and ``id``, so the copies an
    upsampling mix makes of one record (and exact duplicates) hash alike."""
    import hashlib

    body = json.dumps({k: v for k, v in record.items() if k not in ("source", "id")},
                      ensure_ascii=False, sort_keys=True)
    return int.from_bytes(hashlib.blake2b(body.encode("utf-8"), digest_size=8).digest(), "little") >> 1


def _read_groups(path: Path, stratify: str | None) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Return the group id (int32) of each record of ``path``, the group labels by id, and each
    record's content hash (int64)."""
    from array import array

    ids, labels, hashes = array("i"), {}, array("q")
    with _open_binary(path) as f:
        for number, line in _iter_lines(f):
            record = _parse_record(line, path, lambda n=number: n)
            ids.append(labels.setdefault(_group_label(record, stratify), len(labels)))
            hashes.append(_content_hash(record))
    return (np.frombuffer(ids, dtype=np.int32), list(labels),
            np.frombuffer(hashes, dtype=np.int64))


def _validation_size(val, n: int, path: Path) -> int:
    """Return how many of ``n`` records go to validation: ``val`` is a fraction in (0, 1) or a count;
    a fraction rounds to the nearest count, at least 1."""
    is_count = isinstance(val, int) or (isinstance(val, float) and val >= 1 and val.is_integer())
    if isinstance(val, bool) or not isinstance(val, (int, float)) or not val > 0:
        raise MedtuneError(f"validation size must be a fraction in (0, 1) or a count ≥ 1, got {val!r}")
    if not is_count and val >= 1:
        raise MedtuneError(f"validation size {val} is neither a fraction < 1 nor a whole count")
    size = int(val) if is_count else max(1, round(val * n))
    if size >= n:
        raise MedtuneError(f"{path}: validation size {size} leaves no training records "
                           f"(the file has {n})")
    return size


def _validation_mask(group_ids: np.ndarray, n_groups: int, n_val: int, rng) -> tuple[np.ndarray, dict]:
    """Return a bool mask of validation records and the validation count of each group id: counts
    proportional to group sizes (largest remainder, exact total), records drawn without replacement
    within each group."""
    sizes = np.bincount(group_ids, minlength=n_groups)
    shares = {g: Fraction(int(size), len(group_ids)) for g, size in enumerate(sizes)}
    per_group = largest_remainder(n_val, shares)
    members = np.split(np.argsort(group_ids, kind="stable"), np.cumsum(sizes)[:-1])
    mask = np.zeros(len(group_ids), dtype=bool)
    for g, rows in enumerate(members):
        mask[rows[rng.choice(len(rows), per_group[g], replace=False)]] = True
    return mask, per_group


def _write_split(path: Path, mask: np.ndarray, out_dir: Path, progress: bool) -> None:
    """Copy each line of ``path`` unchanged to train.jsonl or validation.jsonl by ``mask``."""
    from tqdm.auto import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    targets = [out_dir / "train.jsonl", out_dir / "validation.jsonl"]
    with atomic_output(targets[0]) as train_tmp, atomic_output(targets[1]) as val_tmp, \
            _open_binary(path) as f, open(train_tmp, "wb") as train, open(val_tmp, "wb") as val:
        lines = tqdm(_iter_lines(f), total=len(mask), desc="splitting", unit="rec",
                     disable=not progress, delay=1)
        for is_val, (_, line) in zip(mask.tolist(), lines):
            (val if is_val else train).write(line if line.endswith(b"\n") else line + b"\n")


def split(path, out_dir, val: float, seed: int, stratify: str | None = "source",
          progress: bool = False) -> dict:
    """Split the JSONL ``path`` into ``out_dir/train.jsonl`` and ``out_dir/validation.jsonl``;
    return ``{"train", "validation", "groups": {label: {"train", "validation"}}}``.

    ``val``: a fraction in (0, 1) (rounded to a count, at least 1) or a count ≥ 1, which must leave
    at least one training record. Stratified by the value of the record key ``stratify`` (records
    without it form the group ``(none)``; ``stratify=None``: one group): each group gives validation
    records in proportion to its size, by largest remainder so the total is exact. A group too small
    for its share can get 0 validation records — no minimum per group, which would skew the
    proportions; the returned ``groups`` shows it. Lines are copied byte for byte, each file keeping
    input order. Same file and seed → same split.

    Records with the same content (all fields but ``source`` and ``id``: the copies an upsampling
    mix makes, exact duplicates) are one unit and land on one side together, so validation never
    holds a record training also saw; the validation count is then scaled to the unique records
    and the returned counts (and ``duplicates``, records beyond the first of their content) are
    the records actually written."""
    path, out_dir = Path(path), Path(out_dir)
    group_ids, labels, hashes = _read_groups(path, stratify)
    if len(group_ids) == 0:
        raise MedtuneError(f"{path}: no records")
    n_val = _validation_size(val, len(group_ids), path)
    _, first, unit_of = np.unique(hashes, return_index=True, return_inverse=True)
    unit_of = unit_of.reshape(-1)
    order = np.argsort(first, kind="stable")  # units in file order of their first record
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    unit_of, first = rank[unit_of], first[order]
    n_units = len(first)
    if n_units < 2:
        raise MedtuneError(f"{path}: every record has the same content; nothing to hold out")
    n_unit_val = n_val if n_units == len(group_ids) else \
        min(n_units - 1, max(1, round(n_val * n_units / len(group_ids))))
    unit_mask, _ = _validation_mask(group_ids[first], len(labels), n_unit_val, np.random.default_rng(seed))
    mask = unit_mask[unit_of]
    _write_split(path, mask, out_dir, progress)
    n_val = int(mask.sum())
    val_sizes = np.bincount(group_ids[mask], minlength=len(labels))
    sizes = np.bincount(group_ids, minlength=len(labels))
    return {
        "train": len(mask) - n_val,
        "validation": n_val,
        "duplicates": len(group_ids) - n_units,
        "groups": {label: {"train": int(sizes[g] - val_sizes[g]), "validation": int(val_sizes[g])}
                   for g, label in enumerate(labels)},
    }
