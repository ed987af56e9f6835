"""A stage's records as tokenized train / eval datasets: split, shuffled, packed, and cached.

The result is cached as Arrow files keyed by the data hashes, tokenizer and data settings
(``$MEDTUNE_CACHE``/tokenized), so a crashed or repeated run does not tokenize again. The stage
says how records become examples through ``make(records, stats)``. Example::

    train, evals, stats = tokenized_datasets(cfg, make, tokenizer, files, pack=False)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from medtune.data.tokenize.shards import checkpointed_examples
from medtune.errors import MedtuneError

if TYPE_CHECKING:
    from medtune.config import StageConfig

log = logging.getLogger("medtune")


def tokenized_datasets(cfg: StageConfig, make, tokenizer, files, pack: bool):
    """Return ``(train, eval_or_None, stats)`` datasets: tokenized by ``make``, split, packed when
    ``pack``; loaded from the cache when this exact tokenization ran before."""
    from medtune.data.tokenize.examples import TokenStats

    key = cache_key(cfg, tokenizer, files)
    cached = load_cached_rows(key)
    if cached is not None:
        log.info("tokenized data loaded from cache %s", cache_dir() / key)
        return cached
    stats = TokenStats()
    train, evals = tokenize_rows(cfg, make, tokenizer, files, stats, pack)
    for reason, count in stats.skipped.items():
        log.warning("skipped %d examples: %s", count, reason)
    if stats.truncated:
        log.warning("truncated %d examples to data.max_length=%d", stats.truncated, cfg.data.max_length)
    result = (as_dataset(train), as_dataset(evals) if evals is not None and len(evals) else None, stats)
    save_cached_rows(key, *result)
    if key:
        shutil.rmtree(cache_dir() / f"{key}.parts", ignore_errors=True)
        cached = load_cached_rows(key)  # memory-mapped from disk instead of held in memory
        if cached is not None:
            return cached[0], cached[1], stats
    return result


def tokenize_rows(cfg: StageConfig, make, tokenizer, files, stats, pack: bool):
    """Return ``(train, eval)`` examples: Arrow tables, or lists of dicts when packed.

    Each train example carries ``bucket``: the index of the file it came from (for curricula).
    Rows stay in Arrow (memory-mapped shards) unless packing needs them as Python lists.
    """
    import pyarrow as pa

    from medtune.data.tokenize.examples import TokenStats, pack_sequences

    records = [(i, r) for i, f in enumerate(files) for r in f.records]
    random.Random(cfg.train.seed).shuffle(records)
    n_eval = round(len(records) * cfg.data.eval_split)
    if cfg.data.eval_split and n_eval == 0:
        n_eval = 1
    parts, tables = parts_dir(cache_key(cfg, tokenizer, files)), []
    for bucket in range(len(files)):
        part = [r for i, r in records[n_eval:] if i == bucket]
        table = checkpointed_examples(parts, f"train{bucket}", part, make, stats, cfg.data.workers)
        if table.num_rows:
            tables.append(table.append_column("bucket", pa.array([bucket] * table.num_rows, pa.int64())))
    if not tables:
        raise MedtuneError(f"no training examples left after tokenization (skipped: {stats.skipped})")
    train = pa.concat_tables(tables)
    order = list(range(train.num_rows))
    random.Random(cfg.train.seed).shuffle(order)  # the same order as shuffling the rows themselves
    train = train.take(order)
    evals = checkpointed_examples(parts, "eval", [r for _, r in records[:n_eval]], make, TokenStats(),
                                  cfg.data.workers)
    evals = evals if evals.num_rows else None
    if pack:
        train = pack_sequences(train.to_pylist(), cfg.data.max_length)
        evals = pack_sequences(evals.to_pylist(), cfg.data.max_length) if evals is not None else None
        stats.rows = len(train)
    return train, evals


def as_dataset(rows):
    """Return ``rows`` (an Arrow table or a list of dicts) as a ``datasets.Dataset`` with ``length``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from datasets import Dataset

    table = pa.Table.from_pylist(rows) if isinstance(rows, list) else rows
    if "length" not in table.column_names:
        table = table.append_column("length", pc.list_value_length(table["input_ids"]).cast(pa.int64()))
    return Dataset(table)


def cache_dir() -> Path:
    """Return where tokenized datasets are cached (``$MEDTUNE_CACHE`` or ~/.cache/medtune)."""
    return Path(os.environ.get("MEDTUNE_CACHE") or Path.home() / ".cache" / "medtune") / "tokenized"


def parts_dir(key: str | None) -> Path | None:
    """Return where the finished shards of cache entry ``key`` wait (None: nothing is kept)."""
    return cache_dir() / f"{key}.parts" if key else None


def cache_key(cfg: StageConfig, tokenizer, files) -> str | None:
    """Return a hash of everything tokenization depends on (None: tokenizer cannot be hashed)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    parts = {
        "version": 2, "stage": cfg.stage, "preference": dataclasses.asdict(cfg.preference), "seed": cfg.train.seed,
        "data": {k: v for k, v in dataclasses.asdict(cfg.data).items() if k != "train"},
        "files": [(f.sha256, f.format) for f in files],
        "tokenizer": hashlib.sha256(backend.to_str().encode()).hexdigest(),
        "template": tokenizer.chat_template, "special": tokenizer.special_tokens_map,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def load_cached_rows(key):
    """Return ``(train, eval, stats)`` from the cache, or None."""
    from datasets import load_from_disk

    from medtune.data.tokenize.examples import TokenStats

    path = cache_dir() / key if key else None
    if path is None or not (path / "stats.json").is_file():
        return None
    stats = TokenStats(**json.loads((path / "stats.json").read_text(encoding="utf-8")))
    stats.from_cache = True
    evals = load_from_disk(str(path / "eval")) if (path / "eval").is_dir() else None
    return load_from_disk(str(path / "train")), evals, stats


def save_cached_rows(key, train, evals, stats) -> None:
    """Write tokenized datasets to the cache (atomically: a crash leaves no partial entry)."""
    if not key:
        return
    final = cache_dir() / key
    tmp = final.with_name(f".{key}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    train.save_to_disk(str(tmp / "train"))
    if evals is not None:
        evals.save_to_disk(str(tmp / "eval"))
    (tmp / "stats.json").write_text(json.dumps(dataclasses.asdict(stats)), encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    try:
        tmp.rename(final)
    except OSError:  # another process (torchrun rank) stored the same entry first
        shutil.rmtree(tmp, ignore_errors=True)
