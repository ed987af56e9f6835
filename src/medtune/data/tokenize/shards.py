"""Records tokenized shard by shard, each finished shard kept on disk, over a pool of processes.

A crashed run's next attempt loads the shards it finished instead of tokenizing them again.
``records`` is a list, or records left on disk (``medtune.data.readers.inputs.SpooledRecords``: a
spool file and indices), which each worker loads and tokenizes ``BATCH_RECORDS`` at a time, writing
each batch's rows to the shard's Arrow file: neither the main process nor a worker holds a shard.
``make(records, stats) -> list[dict]`` is any picklable callable (a stage's example maker); workers
are forked (they share the parent's modules and tokenizer pages), so it must not hold open
resources. Example::

    from medtune.data.tokenize.examples import TokenStats
    stats = TokenStats()
    table = checkpointed_examples(Path("cache/k.parts"), "train", records, make, stats, workers=4)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

SHARD_RECORDS = 20_000  # tokenization work lost to a crash is at most one shard
BATCH_RECORDS = 1_000  # records tokenized and written at a time: a worker holds one batch's rows


class ShardWriter:
    """``make`` applied to one shard job ``(part_dir, records)``: rows written to ``part_dir``,
    stats returned (rows stay on disk, so workers never send them back through a pipe)."""

    def __init__(self, make):
        self.make = make

    def __call__(self, job: tuple[Path, list]):
        from medtune.data.tokenize.examples import TokenStats

        path, records = job
        stats = TokenStats()
        batches = (self.make(loaded(records[i:i + BATCH_RECORDS]), stats)
                   for i in range(0, len(records), BATCH_RECORDS))
        _save_part(path, batches, stats)
        return stats


def loaded(records) -> list:
    """``records`` as a list (records on disk are read now)."""
    return records.load() if hasattr(records, "load") else records


def tokenize_workers(workers: int, shards: int) -> int:
    """Processes for ``shards`` pending shards: 1 under torchrun (every rank tokenizes) or for one
    shard (spawning costs seconds), else ``workers`` (0: one per core)."""
    from medtune.data.parallel import default_workers

    if shards <= 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return 1
    return min(default_workers(workers), shards)


def checkpointed_examples(parts: Path | None, name: str, records, make, stats, workers: int = 1):
    """The examples of ``records`` as one Arrow table, tokenized shard by shard.

    Each finished shard is kept in ``parts`` (``<name>-<n>`` dirs), so a crashed run's next attempt
    loads finished shards instead of tokenizing them again; ``parts=None`` tokenizes in memory.
    Pending shards are tokenized by ``workers`` processes.
    """
    import pyarrow as pa

    from medtune.data.parallel import parallel_map

    if parts is None:
        return pa.Table.from_pylist(make(loaded(records), stats))
    shards = [records[i:i + SHARD_RECORDS] for i in range(0, len(records), SHARD_RECORDS)]
    jobs = list(zip(shard_dirs(parts, name, len(records)), shards))
    todo = [job for job in jobs if not (job[0] / "stats.json").is_file()]
    for _ in parallel_map(ShardWriter(make), todo, tokenize_workers(workers, len(todo)), fork=True):
        pass  # each shard is on disk when its worker returns
    for path, _ in jobs:
        stats.merge_dict(json.loads((path / "stats.json").read_text(encoding="utf-8")))
    return load_examples([path for path, _ in jobs])


def shard_dirs(parts: Path, name: str, n_records: int) -> list[Path]:
    """The dirs the shards of ``n_records`` records named ``name`` are kept in, in order."""
    return [parts / f"{name}-{n}" for n in range(-(-n_records // SHARD_RECORDS))]


def load_examples(paths: list[Path]):
    """The rows of the finished shards ``paths`` as one table, memory-mapped, not copied (a fresh
    map each call: pages a caller read leave its memory once it drops the table)."""
    import pyarrow as pa

    tables = [pa.ipc.open_file(pa.memory_map(str(p / "rows.arrow"))).read_all() for p in paths]
    tables = [t for t in tables if t.num_rows]
    return pa.concat_tables(tables) if tables else pa.table({})


def _save_part(path: Path, batches, stats) -> None:
    """Write the rows of ``batches`` (lists of example dicts) to ``path/rows.arrow`` a batch at a
    time, then ``stats``; the shard dir appears only when complete."""
    import pyarrow as pa

    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    writer = schema = None
    with pa.OSFile(str(tmp / "rows.arrow"), "wb") as sink:
        for rows in batches:
            if not rows:
                continue
            table = _compact(pa.Table.from_pylist(rows))
            if writer is None:
                schema = table.schema
                writer = pa.ipc.new_file(sink, schema)
            writer.write_table(table.cast(schema))
        if writer is None:
            writer = pa.ipc.new_file(sink, pa.schema([]))
        writer.close()
    (tmp / "stats.json").write_text(json.dumps(dataclasses.asdict(stats)), encoding="utf-8")
    shutil.rmtree(path, ignore_errors=True)
    try:
        tmp.rename(path)
    except OSError:  # another rank stored it first
        shutil.rmtree(tmp, ignore_errors=True)


def _compact(table):
    """``table`` with token-id lists stored as int32 (ids and -100 labels fit): half the memory."""
    import pyarrow as pa

    for i, f in enumerate(table.schema):
        if pa.types.is_list(f.type) and pa.types.is_int64(f.type.value_type):
            table = table.set_column(i, f.name, table.column(i).cast(pa.list_(pa.int32())))
    return table
