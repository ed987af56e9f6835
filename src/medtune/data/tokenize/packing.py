"""Packing over examples that stay on disk: first-fit decreasing bins from the lengths alone, rows
built a batch of bins at a time, so packing a corpus holds one batch of rows in memory.

Example::

    bins = first_fit_bins([5, 3, 4], max_length=8)   # [[0, 1], [2]]
    write_packed(lambda: table, order, 1024, writer)  # table: Arrow input_ids / labels
"""

from __future__ import annotations

from medtune.data.tokenize.spans import IGNORE

TOKENS_PER_BATCH = 1 << 20  # packed rows are built and written this many tokens at a time


def first_fit_bins(lengths, max_length: int) -> list[list[int]]:
    """Return the bins of first-fit decreasing: positions of ``lengths``, longest first, each put
    in the first bin with room. A max-tree over the bins' free room finds that bin in O(log n)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    size = 1 << max(0, len(lengths) - 1).bit_length()  # a leaf per possible bin
    room = [max_length] * (2 * size)  # unused bins (leaves) are empty: the first is the next new bin
    bins: list[list[int]] = []
    for i in order:
        n = lengths[i]
        if n > max_length:
            raise ValueError(f"example of {n} tokens does not fit max_length={max_length}; truncate first")
        node = 1
        while node < size:
            node = 2 * node if room[2 * node] >= n else 2 * node + 1
        slot = node - size
        if slot == len(bins):
            bins.append([])
        bins[slot].append(i)
        room[node] -= n
        node //= 2
        while node:
            room[node] = max(room[2 * node], room[2 * node + 1])
            node //= 2
    return bins


def write_packed(open_table, order, max_length: int, write) -> int:
    """Pack the rows ``order`` of the table ``open_table()`` returns (in that order, as
    ``pack_sequences`` would) and pass each batch of packed rows to ``write(arrow_table)``; return
    the number of packed rows. The table is opened again per batch (see ``cache._write_rows``)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    order = np.asarray(order, dtype=np.int64)
    lengths = pc.list_value_length(open_table()["input_ids"]).to_numpy()[order].tolist()
    bins = first_fit_bins(lengths, max_length)
    del lengths
    step = max(1, TOKENS_PER_BATCH // max_length)
    for start in range(0, len(bins), step):
        group = bins[start:start + step]
        members = [i for members in group for i in members]
        rows = take_rows(open_table().select(["input_ids", "labels"]), order[members]).to_pylist()
        at, packed = 0, []
        for members in group:
            packed.append(join_examples(rows[at:at + len(members)]))
            at += len(members)
        write(pa.Table.from_pylist(packed))
    return len(bins)


def take_rows(table, indices):
    """Rows ``indices`` (numpy int64) of ``table``, in that order, taken record batch by record
    batch: Arrow's take over a chunked table first joins the chunks, a copy of every shard."""
    import numpy as np
    import pyarrow as pa

    batches = table.to_batches()
    starts = np.cumsum([0] + [b.num_rows for b in batches])
    which = np.searchsorted(starts, indices, side="right") - 1
    by_batch = np.argsort(which, kind="stable")
    pieces = [batches[b].take(pa.array(indices[by_batch][which[by_batch] == b] - starts[b]))
              for b in np.unique(which)]
    rows = pa.Table.from_batches(pieces, schema=table.schema).combine_chunks()
    back = np.empty_like(by_batch)
    back[by_batch] = np.arange(len(by_batch))
    return rows.take(pa.array(back))


def join_examples(examples) -> dict:
    """One packed row: the examples' tokens in a row, positions restarting, first labels masked."""
    ids, labels, pos = [], [], []
    for ex in examples:
        n = len(ex["input_ids"])
        ids += ex["input_ids"]
        labels += [IGNORE] + list(ex["labels"][1:])
        pos += list(range(n))
    return {"input_ids": ids, "labels": labels, "position_ids": pos}
