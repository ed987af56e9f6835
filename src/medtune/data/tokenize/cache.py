"""A stage's records as tokenized train / eval datasets: split, shuffled, packed, and cached.

The result is cached as Arrow files keyed by the data hashes, tokenizer and data settings
(``$MEDTUNE_CACHE``/tokenized) and read memory-mapped, so a crashed or repeated run does not
tokenize again and training holds no examples in memory. The stage says how records become
examples through ``make(records, stats)``. Example::

    corpus = read_corpus(cfg.data.train, cfg.data.format)
    train, evals, stats = tokenized_datasets(cfg, make, tokenizer, corpus, pack=False)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from medtune.data.tokenize.shards import checkpointed_examples
from medtune.errors import MedtuneError

if TYPE_CHECKING:
    from medtune.config import StageConfig

log = logging.getLogger("medtune")


def tokenized_datasets(cfg: StageConfig, make, tokenizer, corpus, pack: bool):
    """Return ``(train, eval_or_None, stats)`` datasets of ``corpus`` (a spooled
    :class:`~medtune.data.readers.inputs.Corpus`): tokenized by ``make``, split, packed when
    ``pack``; read memory-mapped from the cache, where this exact tokenization may have run before."""
    from medtune.data.tokenize.examples import TokenStats

    key = cache_key(cfg, tokenizer, corpus.files)
    cached = load_cached_rows(key)
    if cached is not None:
        log.info("tokenized data loaded from cache %s", cache_dir() / key)
        return cached
    stats = TokenStats()
    final = cache_dir() / (key or f"uncached-{os.getpid()}")
    tmp = final.with_name(f".{final.name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with system_memory_pool():
            tokenize_rows(cfg, make, corpus, stats, pack, parts_dir(key), tmp)
        (tmp / "stats.json").write_text(json.dumps(dataclasses.asdict(stats)), encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for reason, count in stats.skipped.items():
        log.warning("skipped %d examples: %s", count, reason)
    if stats.truncated:
        log.warning("truncated %d examples to data.max_length=%d", stats.truncated, cfg.data.max_length)
    if not key:  # nothing to key a cache entry by: read into memory, leave nothing on disk
        train, evals = _load_split(tmp, "train", True), _load_split(tmp, "eval", True)
        shutil.rmtree(tmp, ignore_errors=True)
        return train, evals, stats
    _commit(tmp, final)
    shutil.rmtree(parts_dir(key), ignore_errors=True)
    train, evals, _ = load_cached_rows(key)
    return train, evals, stats


def tokenize_rows(cfg: StageConfig, make, corpus, stats, pack: bool, parts: Path | None, out: Path) -> None:
    """Write the train and eval examples of ``corpus`` to ``out/{train,eval}.arrow``.

    Records are split and shuffled by index (the same order as shuffling the records themselves),
    tokenized shard by shard from the spool by ``datasets.map(num_proc=data.workers)``
    (:mod:`medtune.data.tokenize.shards`), and written back a window of the shuffled order at a
    time, read from the shards with plain file reads, so neither the records nor the examples are
    ever all in memory. Each train example carries ``bucket``: the ``data.train`` entry it came from
    (for curricula). Packing is first-fit decreasing over all examples (the lengths are all it
    holds), its rows built a window at a time.
    """
    import numpy as np

    from medtune.data.tokenize.examples import TokenStats

    order = shuffled(len(corpus), cfg.train.seed)
    n_eval = round(len(order) * cfg.data.eval_split)
    if cfg.data.eval_split and n_eval == 0:
        n_eval = 1
    buckets, train_ids, sources = corpus.buckets(), order[n_eval:], []
    for bucket in range(max(f.bucket for f in corpus.files) + 1):
        ids = corpus.records(train_ids[buckets[train_ids] == bucket])
        files, n_rows = checkpointed_examples(parts, f"train{bucket}", ids, make, stats, cfg.data.workers)
        if n_rows:
            sources.append((files, bucket, n_rows))
    del buckets, train_ids
    if not sources:
        raise MedtuneError(f"no training examples left after tokenization (skipped: {stats.skipped})")
    rows = shuffled(sum(n for _, _, n in sources), cfg.train.seed)  # as shuffling the rows themselves
    row_buckets = np.repeat([b for _, b, _ in sources], [n for _, _, n in sources]).astype(np.int64)
    evals, n_evals = checkpointed_examples(parts, "eval", corpus.records(order[:n_eval]), make, TokenStats(),
                                           cfg.data.workers)
    train = [src for srcs, _, _ in sources for src in srcs]
    packed = _write_rows(out / "train.arrow", train, rows, cfg.data.max_length if pack else 0, row_buckets,
                         pack_by_bucket=cfg.data.mixture != "none")
    del rows, row_buckets
    if n_evals:
        _write_rows(out / "eval.arrow", evals, np.arange(n_evals), cfg.data.max_length if pack else 0)
    if pack:
        stats.rows = packed


@contextlib.contextmanager
def system_memory_pool():
    """Arrow allocates from the C library's allocator meanwhile (and so do the processes forked
    meanwhile), not jemalloc: jemalloc keeps freed pages of the windows the write puts in order,
    which raised the peak at 300,000 records from 676 to 937 MiB (bench/data_speed.py)."""
    import pyarrow as pa

    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


def shuffled(n: int, seed: int):
    """``random.Random(seed).shuffle(list(range(n)))`` as a numpy int64 array, shuffled in an
    ``array`` of machine ints (the same swaps, 8 bytes a row instead of a Python int object each)."""
    import random
    from array import array

    import numpy as np

    order = array("q", range(n))
    random.Random(seed).shuffle(order)
    return np.frombuffer(order, dtype=np.int64).copy()


def _write_rows(path: Path, sources, order, max_length: int, buckets=None, pack_by_bucket: bool = False) -> int:
    """Write rows ``order`` of ``sources`` (Arrow tables and IPC file paths, rows numbered one after
    the other; packed into ``max_length`` rows when > 0; each with its ``buckets`` entry as
    ``bucket`` when given) to the Arrow stream file ``path``, with a ``length`` column; return how
    many rows it holds. ``pack_by_bucket``: each bucket is packed apart (its rows keep their
    ``bucket``: a data.mixture samples by source).

    The rows are put in order a window at a time from plain reads of the shards
    (:func:`medtune.data.tables.rows_in_order`): a memory map's pages that a random-order take
    touches would stay in this process's memory, adding up to every shard.
    """
    import numpy as np
    import pyarrow as pa

    from medtune.data.tables import WINDOW_BYTES, rows_in_order, source_bytes, window_ends
    from medtune.data.tokenize.packing import write_packed

    writer, written = None, 0

    def write(part):
        nonlocal writer, written
        part = with_length(part)
        if writer is None:
            writer = pa.ipc.new_stream(str(path), part.schema)
        writer.write_table(part)
        written += part.num_rows

    try:
        if max_length and pack_by_bucket:  # a data.mixture samples by source: each bucket packed apart
            order = np.asarray(order, dtype=np.int64)
            for bucket in np.unique(buckets):
                tag = int(bucket)
                write_packed(sources, order[buckets[order] == bucket], max_length,
                             lambda part, tag=tag: write(part.append_column("bucket", pa.array([tag] * part.num_rows))),
                             path.parent)
        elif max_length:
            write_packed(sources, order, max_length, write, path.parent)
        else:
            order = np.asarray(order, dtype=np.int64)
            ends = window_ends(len(order), max(1, WINDOW_BYTES * len(order) // max(1, source_bytes(sources))))
            start = 0
            for end, part in zip(ends, rows_in_order(sources, order, ends, scratch=path.parent)):
                if buckets is not None:
                    part = part.append_column("bucket", pa.array(buckets[order[start:end]]))
                write(part)
                start = end
    finally:
        if writer is not None:
            writer.close()
    return written


def with_length(table):
    """``table`` with a ``length`` column (tokens per row) when it has none."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if "length" in table.column_names:
        return table
    return table.append_column("length", pc.list_value_length(table["input_ids"]).cast(pa.int64()))


def as_dataset(rows):
    """Return ``rows`` (an Arrow table or a list of dicts) as a ``datasets.Dataset`` with ``length``."""
    import pyarrow as pa
    from datasets import Dataset

    return Dataset(with_length(pa.Table.from_pylist(rows) if isinstance(rows, list) else rows))


def cache_dir() -> Path:
    """Return where tokenized datasets are cached (``$MEDTUNE_CACHE`` or ~/.cache/medtune)."""
    from medtune.data.readers.inputs import cache_root

    return cache_root() / "tokenized"


def parts_dir(key: str | None) -> Path | None:
    """Return where the finished shards of cache entry ``key`` wait (None: nothing is kept)."""
    return cache_dir() / f"{key}.parts" if key else None


def cache_key(cfg: StageConfig, tokenizer, files) -> str | None:
    """Return a hash of everything tokenization depends on (None: tokenizer cannot be hashed)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    parts = {
        "version": 3, "stage": cfg.stage, "preference": dataclasses.asdict(cfg.preference), "seed": cfg.train.seed,
        "data": {k: v for k, v in dataclasses.asdict(cfg.data).items() if k != "train"},
        "files": [(f.sha256, f.format) for f in files],
        "tokenizer": hashlib.sha256(backend.to_str().encode()).hexdigest(),
        "template": tokenizer.chat_template, "special": tokenizer.special_tokens_map,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def load_cached_rows(key):
    """Return ``(train, eval, stats)`` from the cache (memory-mapped), or None."""
    from medtune.data.tokenize.examples import TokenStats

    path = cache_dir() / key if key else None
    if path is None or not (path / "stats.json").is_file():
        return None
    stats = TokenStats(**json.loads((path / "stats.json").read_text(encoding="utf-8")))
    stats.from_cache = True
    return _load_split(path, "train"), _load_split(path, "eval"), stats


def _load_split(path: Path, split: str, in_memory: bool = False):
    from datasets import Dataset

    file = path / f"{split}.arrow"
    return Dataset.from_file(str(file), in_memory=in_memory) if file.is_file() else None


def _commit(tmp: Path, final: Path) -> None:
    """Move a finished cache entry into place (a crash leaves no partial entry)."""
    shutil.rmtree(final, ignore_errors=True)
    try:
        tmp.rename(final)
    except OSError:  # another process (torchrun rank) stored the same entry first
        shutil.rmtree(tmp, ignore_errors=True)
