"""Packing over examples that stay on disk: first-fit decreasing bins from the lengths alone, the
examples then read in bin order a window at a time (:func:`medtune.data.tables.rows_in_order`) and
joined with numpy, so packing a corpus holds one window of rows and the lengths, never the tokens.

Example::

    bins = first_fit_bins([5, 3, 4], max_length=8)   # [[0, 1], [2]]
    write_packed(["shard-0/rows.arrow"], order, 1024, writer)  # Arrow input_ids / labels
"""

from __future__ import annotations

from medtune.data.tokenize.spans import IGNORE


def _first_fit_slots(lengths, max_length: int):
    """``(order, slots)`` of first-fit decreasing: the positions of ``lengths``, longest first (ties
    in position order), and the bin each is put in (the first with room). A max-tree over the bins'
    free room finds that bin in O(log n)."""
    import numpy as np

    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    if len(lengths) and lengths.max() > max_length:
        raise ValueError(f"example of {lengths.max()} tokens does not fit max_length={max_length}; "
                         "truncate first")
    size = 1 << max(0, len(lengths) - 1).bit_length()  # a leaf per possible bin
    room = [max_length] * (2 * size)  # unused bins (leaves) are empty: the first is the next new bin
    slots = np.empty(len(lengths), dtype=np.int64)
    for k, n in enumerate(lengths[order].tolist()):
        node = 1
        while node < size:
            node = 2 * node if room[2 * node] >= n else 2 * node + 1
        slots[k] = node - size
        room[node] -= n
        node //= 2
        while node:
            room[node] = max(room[2 * node], room[2 * node + 1])
            node //= 2
    return order, slots


def first_fit_bins(lengths, max_length: int) -> list[list[int]]:
    """Return the bins of first-fit decreasing: positions of ``lengths``, longest first, each put
    in the first bin with room."""
    order, slots = _first_fit_slots(lengths, max_length)
    bins: list[list[int]] = [[] for _ in range(int(slots.max()) + 1 if len(slots) else 0)]
    for i, slot in zip(order.tolist(), slots.tolist()):
        bins[slot].append(i)
    return bins


def first_fit_sequence(lengths, max_length: int):
    """The bins of :func:`first_fit_bins` as numpy arrays: ``(members, sizes)``, every bin's
    positions one bin after the other, and how many each bin holds."""
    import numpy as np

    order, slots = _first_fit_slots(lengths, max_length)
    return order[np.argsort(slots, kind="stable")], np.bincount(slots) if len(slots) else slots


def write_packed(sources, order, max_length: int, write, scratch=None) -> int:
    """Pack the rows ``order`` of ``sources`` (Arrow tables and IPC file paths, rows numbered one
    after the other; in that order, as ``pack_sequences`` would) and pass each window of packed rows
    to ``write(arrow_table)``; return the number of packed rows. ``scratch``: where the rows wait
    between the two passes of :func:`~medtune.data.tables.rows_in_order` (None: a temporary dir)."""
    import numpy as np
    import pyarrow.compute as pc

    from medtune.data.tables import (
        WINDOW_BYTES,
        rows_in_order,
        source_batches,
        source_bytes,
        window_ends,
    )

    order = np.asarray(order, dtype=np.int64)
    lengths = np.concatenate([pc.list_value_length(b.column(0)).to_numpy(zero_copy_only=False)
                              for s in sources for b in source_batches(s, ["input_ids"])] or [[]])
    members, sizes = first_fit_sequence(lengths[order], max_length)
    seq = order[members]  # the rows in bin order
    del members, lengths
    per_window = max(1, WINDOW_BYTES * len(seq) // max(1, source_bytes(sources)))
    ends = window_ends(len(seq), per_window, np.cumsum(sizes))
    bin_ends, first = np.cumsum(sizes), 0
    for end, rows in zip(ends, rows_in_order(sources, seq, ends, ["input_ids", "labels"], scratch)):
        last = int(np.searchsorted(bin_ends, end, side="right"))  # windows end where bins end
        write(join_rows(rows, sizes[first:last]))
        first = last
    return len(sizes)


def join_rows(rows, sizes):
    """Packed rows of ``rows`` (an Arrow table of examples, in bin order): each ``sizes`` consecutive
    examples joined as :func:`join_examples` joins them (positions restarting, first labels masked)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = rows.column("input_ids").combine_chunks()
    lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False).astype(np.int64)
    values = ids.flatten()
    labels = rows.column("labels").combine_chunks().flatten()
    kind = labels.type
    labels = labels.to_numpy(zero_copy_only=False).copy()
    starts = np.cumsum(lengths) - lengths  # where each example begins in the joined tokens
    labels[starts[lengths > 0]] = IGNORE
    positions = np.arange(len(values), dtype=np.int64) - np.repeat(starts, lengths)
    first = np.cumsum(sizes) - sizes  # each packed row's first example
    offsets = pa.array(np.append(starts[first], len(values)) if len(first) else [0], pa.int32())
    return pa.table({"input_ids": pa.ListArray.from_arrays(offsets, values),
                     "labels": pa.ListArray.from_arrays(offsets, pa.array(labels, kind)),
                     "position_ids": pa.ListArray.from_arrays(offsets, pa.array(positions, values.type))})


def join_examples(examples) -> dict:
    """One packed row: the examples' tokens in a row, positions restarting, first labels masked."""
    ids, labels, pos = [], [], []
    for ex in examples:
        n = len(ex["input_ids"])
        ids += ex["input_ids"]
        labels += [IGNORE] + list(ex["labels"][1:])
        pos += list(range(n))
    return {"input_ids": ids, "labels": labels, "position_ids": pos}
