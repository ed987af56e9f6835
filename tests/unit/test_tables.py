"""Rows of Arrow files in any order a window at a time, and packing from disk, equal the in-memory
versions (take, pack_sequences) whatever the window size."""

import random

import numpy as np
import pyarrow as pa
import pytest

from medtune.data import tables
from medtune.data.tables import rows_in_order, take_rows, window_ends
from medtune.data.tokenize.examples import pack_sequences
from medtune.data.tokenize.packing import (
    first_fit_bins,
    first_fit_sequence,
    join_rows,
    write_packed,
)


def examples(n, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ids = [rng.randrange(1000) for _ in range(rng.randint(1, 9))]
        out.append({"input_ids": ids, "labels": [t if rng.random() < 0.7 else -100 for t in ids],
                    "row": i})
    return out


def write_shards(tmp_path, rows, sizes, batch=3):
    """IPC files holding ``rows`` split into ``sizes`` rows each, ``batch`` rows per record batch."""
    paths, at = [], 0
    for k, n in enumerate(sizes):
        table = pa.Table.from_pylist(rows[at:at + n],
                                     schema=pa.schema([("input_ids", pa.list_(pa.int32())),
                                                       ("labels", pa.list_(pa.int32())), ("row", pa.int64())]))
        path = tmp_path / f"s{k}.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
            for b in table.to_batches(max_chunksize=batch):
                w.write_batch(b)
        paths.append(path)
        at += n
    return paths


@pytest.mark.parametrize("per_window", [1, 4, 17, 1000])
def test_rows_in_order_equals_a_take_for_any_window(tmp_path, per_window):
    rows = examples(40)
    paths = write_shards(tmp_path, rows, [13, 0, 20, 7])
    order = np.random.default_rng(1).permutation(40)
    ends = window_ends(40, per_window)
    got = [r for part in rows_in_order(paths, order, ends) for r in part.to_pylist()]
    assert got == [rows[i] for i in order]
    in_memory = pa.ipc.open_file(str(paths[0])).schema
    in_memory = pa.Table.from_pylist(rows, schema=in_memory)
    assert take_rows(in_memory, order[:9]).to_pylist() == [rows[i] for i in order[:9]]
    mixed = [in_memory.slice(0, 25), paths[3]]  # an in-memory table and a file: rows 0-24, then 33-39
    part = next(rows_in_order(mixed, [30, 2, 24], [3]))
    assert part.column("row").to_pylist() == [38, 2, 24]


def test_window_ends_stop_only_at_cuts():
    assert window_ends(10, 4).tolist() == [4, 8, 10]
    assert window_ends(0, 4).tolist() == []
    cuts = np.array([3, 5, 11, 12])
    assert window_ends(12, 4, cuts).tolist() == [3, 5, 11, 12]  # 5 -> 11 is longer than 4: alone
    assert window_ends(12, 9, cuts).tolist() == [5, 12]
    assert window_ends(12, 1, cuts).tolist() == [3, 5, 11, 12]


def test_first_fit_sequence_is_first_fit_bins_flattened():
    lengths = [random.Random(2).randint(1, 8) for _ in range(200)]
    bins = first_fit_bins(lengths, 8)
    members, sizes = first_fit_sequence(lengths, 8)
    assert members.tolist() == [i for b in bins for i in b]
    assert sizes.tolist() == [len(b) for b in bins]
    with pytest.raises(ValueError, match="does not fit"):
        first_fit_sequence([3, 9], 8)


@pytest.mark.parametrize("window_bytes", [1, 200, 1 << 30])
def test_packing_from_disk_equals_pack_sequences(tmp_path, monkeypatch, window_bytes):
    monkeypatch.setattr(tables, "WINDOW_BYTES", window_bytes)
    rows = examples(60, seed=3)
    paths = write_shards(tmp_path, rows, [25, 35], batch=4)
    order = np.random.default_rng(4).permutation(60)
    written = []
    n = write_packed(paths, order, 16, written.append)
    got = [r for t in written for r in t.to_pylist()]
    want = pack_sequences([{"input_ids": rows[i]["input_ids"], "labels": rows[i]["labels"]} for i in order], 16)
    assert got == want and n == len(want)
    if window_bytes == 1:
        assert len(written) == len(want)  # one bin per window: the smallest window holds one row


def test_join_rows_masks_each_first_label_and_restarts_positions():
    table = pa.table({"input_ids": pa.array([[1, 2], [3], [4, 5, 6]], pa.list_(pa.int32())),
                      "labels": pa.array([[1, 2], [3], [4, -100, 6]], pa.list_(pa.int32()))})
    assert join_rows(table, np.array([2, 1])).to_pylist() == [
        {"input_ids": [1, 2, 3], "labels": [-100, 2, -100], "position_ids": [0, 1, 0]},
        {"input_ids": [4, 5, 6], "labels": [-100, -100, 6], "position_ids": [0, 1, 2]}]


def test_rows_in_order_holds_about_a_window_not_the_sources(tmp_path, monkeypatch):
    """Shuffling 8 MiB of rows in 1 MiB windows: Arrow's peak allocation stays a few windows."""
    rng = np.random.default_rng(5)
    rows = [{"input_ids": rng.integers(0, 1000, 200).tolist(), "labels": [-100] * 200, "row": i}
            for i in range(5000)]
    paths = write_shards(tmp_path, rows, [2500, 2500], batch=250)
    data = tables.source_bytes(paths)
    order = rng.permutation(5000)
    before = pa.default_memory_pool()
    pool = pa.proxy_memory_pool(before)
    pa.set_memory_pool(pool)
    try:  # in a function: its Arrow buffers are freed before the pool they came from
        got = (lambda: [r for part in rows_in_order(paths, order, window_ends(5000, 600), scratch=tmp_path)
                        for r in part.column("row").to_pylist()])()
    finally:
        pa.set_memory_pool(before)
    assert got == order.tolist()
    assert pool.max_memory() < data / 2, f"peak {pool.max_memory()} bytes for {data} bytes of rows"
