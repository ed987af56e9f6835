"""Records tokenized shard by shard by ``datasets.Dataset.map(num_proc=..., batched=True)``, each
finished shard kept on disk as the Arrow cache files ``datasets`` writes.

A shard is ``SHARD_RECORDS`` records; each is one ``map`` call with its own ``cache_file_name`` in
``parts``, so a killed run's next attempt loads the shards (and, within a shard, the per-process
files) that finished instead of tokenizing them again. ``datasets`` forks the processes, batches
the records and writes the rows; the mapped dataset holds only the records' positions, and each
batch loads its ``BATCH_RECORDS`` records from the spool
(``medtune.data.readers.inputs.SpooledRecords``, a fresh memory map dropped after the batch: a
random-order read through one long-lived map would keep every page it touched), so neither the main
process nor a worker holds a shard. ``make(records, stats) -> list[dict]`` is any picklable
callable (a stage's example maker); the counts it makes in ``stats`` (skips, truncations) come back
from the workers through one small JSON file per batch, merged when the shard is done. Example::

    from medtune.data.tokenize.examples import TokenStats
    stats = TokenStats()
    files, rows = checkpointed_examples(Path("cache/k.parts"), "train", records, make, stats, workers=4)
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import os
import re
from pathlib import Path

SHARD_RECORDS = 50_000  # tokenization work lost to a crash is at most one shard
BATCH_RECORDS = 1_000  # records tokenized and written at a time: a worker holds one batch's rows


class BatchExamples:
    """The function ``datasets.map`` runs on each batch of positions of one shard's ``records``:
    the records loaded, ``make`` applied, its counts written to ``stats_dir/<start>-<end>.json``
    and the rows returned as an Arrow table (token ids as int32)."""

    def __init__(self, make, records, stats_dir: Path):
        self.make, self.records, self.stats_dir = make, records, stats_dir

    def __call__(self, batch, positions):
        import pyarrow as pa

        from medtune.data.tokenize.examples import TokenStats
        from medtune.files import atomic_write_text

        start, end = positions[0], positions[-1] + 1  # a batch is a contiguous run of positions
        stats = TokenStats()
        rows = self.make(loaded(self.records[start:end]), stats)
        atomic_write_text(self.stats_dir / f"{start}-{end}.json", json.dumps(dataclasses.asdict(stats)))
        if not rows:  # a batch whose columns are empty is not written (nor does it fix the schema)
            return {"input_ids": []}
        return _compact(pa.Table.from_pylist(rows))


def loaded(records) -> list:
    """``records`` as a list (records on disk are read now)."""
    return records.load() if hasattr(records, "load") else records


def tokenize_workers(workers: int, batches: int) -> int:
    """Processes for ``batches`` batches: 1 under torchrun (every rank tokenizes) or for one
    batch (forking costs more), else ``workers`` (0: one per core), at most one per batch."""
    from medtune.data.parallel import default_workers

    if batches <= 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return 1
    return min(default_workers(workers), batches)


def checkpointed_examples(parts: Path | None, name: str, records, make, stats, workers: int = 1):
    """``(sources, rows)``: the examples of ``records``, tokenized shard by shard, as Arrow files
    in order (or, with ``parts=None``, one in-memory table) and how many rows they hold.

    Each finished shard is kept in ``parts`` (``<name>-<n>*.arrow`` and ``<name>-<n>.json``, its
    counts and files), so a crashed run's next attempt loads it instead of tokenizing it again.
    Pending shards are tokenized by ``workers`` processes.
    """
    import pyarrow as pa

    if parts is None:
        table = _compact(pa.Table.from_pylist(make(loaded(records), stats)))
        return [table], table.num_rows
    files, rows = [], 0
    for k, lo in enumerate(range(0, len(records), SHARD_RECORDS)):
        done = _shard(parts, f"{name}-{k}", records[lo:lo + SHARD_RECORDS], make, workers)
        stats.merge_dict(done["stats"])
        files += [parts / f for f, n in done["files"] if n]
        rows += sum(n for _, n in done["files"])
    return files, rows


def _shard(parts: Path, name: str, records, make, workers: int) -> dict:
    """Tokenize shard ``name`` unless done; return its ``{"stats", "files": [(file, rows)]}``."""
    from datasets import Dataset

    from medtune.files import atomic_write_text

    done = parts / f"{name}.json"
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    stats_dir = parts / f"{name}.stats"
    stats_dir.mkdir(parents=True, exist_ok=True)
    n = len(records)
    procs = tokenize_workers(workers, -(-n // BATCH_RECORDS))
    positions = Dataset.from_dict({"position": list(range(n))})
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the tokenizer's threads off before datasets forks
    gc.freeze()  # the children's collector then leaves inherited objects' pages shared
    try:
        out = positions.map(
            BatchExamples(make, records, stats_dir), batched=True, batch_size=BATCH_RECORDS, with_indices=True,
            remove_columns=["position"], num_proc=procs if procs > 1 else None,
            cache_file_name=str(parts / f"{name}.arrow"), load_from_cache_file=True,
            new_fingerprint=hashlib.sha256(str(parts / name).encode()).hexdigest()[:32], desc=f"tokenizing {name}")
    finally:
        gc.unfreeze()
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved
    files = [Path(f["filename"]) for f in out.cache_files]
    del out
    if done.is_file():  # another torchrun rank finished it meanwhile
        return json.loads(done.read_text(encoding="utf-8"))
    result = {"stats": _merged_stats(stats_dir, n, _num_shards(files)),
              "files": [(f.name, _count_rows(f)) for f in files]}
    atomic_write_text(done, json.dumps(result))
    return result


def _num_shards(files: list[Path]) -> int:
    """How many processes wrote ``files`` (datasets names them ``<name>_<rank>_of_<count>.arrow``)."""
    found = re.search(r"_\d{5}_of_(\d{5})\.arrow$", files[0].name) if files else None
    return int(found.group(1)) if found else 1


def _merged_stats(stats_dir: Path, n: int, num_shards: int) -> dict:
    """The counts of the batches that made a shard of ``n`` records split over ``num_shards``
    processes: the files of exactly those batches (a killed run with another split may have left
    others), as datasets splits (contiguous pieces) and batches them."""
    from medtune.data.tokenize.examples import TokenStats
    from medtune.errors import MedtuneError

    stats = TokenStats()
    div, mod = divmod(n, num_shards)
    for rank in range(num_shards):
        lo = div * rank + min(rank, mod)
        hi = lo + div + (1 if rank < mod else 0)
        for start in range(lo, hi, BATCH_RECORDS):
            file = stats_dir / f"{start}-{min(hi, start + BATCH_RECORDS)}.json"
            if not file.is_file():
                raise MedtuneError(f"{file}: the counts of a tokenized batch are missing; delete "
                                   f"{stats_dir.parent} to tokenize again")
            stats.merge_dict(json.loads(file.read_text(encoding="utf-8")))
    return dataclasses.asdict(stats)


def _count_rows(path: Path) -> int:
    """The rows of an Arrow stream file (batch headers only, through a memory map)."""
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        return sum(batch.num_rows for batch in pa.ipc.open_stream(source))


def _compact(table):
    """``table`` with token-id lists stored as int32 (ids and -100 labels fit): half the memory."""
    import pyarrow as pa

    for i, f in enumerate(table.schema):
        if pa.types.is_list(f.type) and pa.types.is_int64(f.type.value_type):
            table = table.set_column(i, f.name, table.column(i).cast(pa.list_(pa.int32())))
    return table
