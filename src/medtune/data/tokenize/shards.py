"""Records tokenized shard by shard, each finished shard kept on disk, over a pool of processes.

A crashed run's next attempt loads the shards it finished instead of tokenizing them again.
``records`` is a list, or records left on disk (``medtune.data.readers.inputs.SpooledRecords``: a
spool file and indices), which each worker loads one shard at a time: the main process never holds
them. ``make(records, stats) -> list[dict]`` is any picklable callable (a stage's example maker):
workers re-create it from its pickle, so it must not hold open resources. Example::

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


class ShardWriter:
    """``make`` applied to one shard job ``(part_dir, records)``: rows written to ``part_dir``,
    stats returned (rows stay on disk, so workers never send them back through a pipe)."""

    def __init__(self, make):
        self.make = make

    def __call__(self, job: tuple[Path, list]):
        from medtune.data.tokenize.examples import TokenStats

        path, records = job
        stats = TokenStats()
        _save_part(path, self.make(loaded(records), stats), stats)
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
    jobs = [(parts / f"{name}-{n}", shard) for n, shard in enumerate(shards)]
    todo = [job for job in jobs if not (job[0] / "stats.json").is_file()]
    for _ in parallel_map(ShardWriter(make), todo, tokenize_workers(workers, len(todo))):
        pass  # each shard is on disk when its worker returns
    tables = []
    for path, _ in jobs:
        table, part_stats = _load_part(path)
        stats.merge(part_stats)
        if table.num_rows:
            tables.append(table)
    return pa.concat_tables(tables) if tables else pa.table({})


def _load_part(path: Path):
    """``(table, stats)`` of a finished shard (the table memory-mapped, not copied)."""
    import pyarrow as pa

    from medtune.data.tokenize.examples import TokenStats

    table = pa.ipc.open_file(pa.memory_map(str(path / "rows.arrow"))).read_all()
    stats = TokenStats()
    stats.merge_dict(json.loads((path / "stats.json").read_text(encoding="utf-8")))
    return table, stats


def _save_part(path: Path, rows: list[dict], stats) -> None:
    import pyarrow as pa

    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    table = _compact(pa.Table.from_pylist(rows))
    with pa.OSFile(str(tmp / "rows.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
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
