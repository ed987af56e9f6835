"""Rows of Arrow tables taken in any order without holding the tables: by record batch, and a whole
permutation of rows on disk produced a window at a time, read with plain file reads.

A memory map is the wrong tool for a random-order read of a large file: every page a take touches
(and the 64 KiB the kernel maps around it) counts in the process's memory until the map is dropped,
so a shuffled take of 20,000 rows out of a million maps most of the file. :func:`rows_in_order`
instead streams the files record batch by record batch once per window of the output order, keeps
the rows whose output position falls in the window, and puts them in order: its memory is one
window, whatever the size of the files. Example::

    part = take_rows(table, np.array([7, 2, 5]))    # rows 7, 2, 5 of an in-memory or mapped table
    ends = window_ends(len(order), rows_per_window=50_000)
    for rows in rows_in_order(["a.arrow", "b.arrow"], order, ends):  # rows order[0:50000], ...
        writer.write_table(rows)
"""

from __future__ import annotations

from pathlib import Path

WINDOW_BYTES = 64 << 20  # data of the rows put in order at a time (about 2-3x that is held)


def take_rows(table, indices):
    """Rows ``indices`` (numpy int64) of ``table``, in that order, taken record batch by record
    batch: Arrow's take over a chunked table or array first joins the chunks, a copy of them all."""
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


def source_batches(source, columns=None):
    """Yield the record batches of ``source``: an in-memory Arrow table, or the path of an Arrow
    IPC file or stream, read a batch at a time with plain reads (not mapped: nothing stays in memory)."""
    import pyarrow as pa

    if isinstance(source, pa.Table):
        for batch in source.to_batches():
            yield batch.select(columns) if columns else batch
        return
    with pa.OSFile(str(source)) as f:
        if f.read(6) == b"ARROW1":  # the IPC file format (else a stream, as datasets writes)
            reader = pa.ipc.open_file(f)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            f.seek(0)
            batches = pa.ipc.open_stream(f)
        for batch in batches:
            yield batch.select(columns) if columns else batch


def source_bytes(sources) -> int:
    """The size of ``sources`` (tables and IPC file paths) in bytes."""
    import pyarrow as pa

    return sum(s.nbytes if isinstance(s, pa.Table) else Path(s).stat().st_size for s in sources)


def window_ends(n: int, rows_per_window: int, cuts=None):
    """End positions of consecutive windows over ``n`` output rows, each at most ``rows_per_window``
    rows (or one span between ``cuts``, when longer), ending only at ``cuts`` when given (a sorted
    numpy array of allowed ends, the last one ``n``)."""
    import numpy as np

    if cuts is None:
        return np.append(np.arange(rows_per_window, n, rows_per_window, dtype=np.int64), n) if n else \
            np.zeros(0, np.int64)
    ends, at = [], 0
    while at < n:
        i = np.searchsorted(cuts, at + rows_per_window, side="right") - 1  # the last cut in reach
        at = int(cuts[i]) if i >= 0 and cuts[i] > at else int(cuts[np.searchsorted(cuts, at, side="right")])
        ends.append(at)
    return np.array(ends, dtype=np.int64)


def rows_in_order(sources, order, ends, columns=None, scratch=None):
    """Yield, for each window ``[start, end)`` of ``ends``, a table of the rows ``order[start:end]``
    of ``sources`` (tables and IPC file paths, their rows numbered one after the other) in that order.

    One window is read straight from the sources. Several are first sorted out in one pass: the
    sources are read a record batch at a time and each row is appended to its window's file in
    ``scratch`` (a temporary folder when None); each window's file is then read back and put in
    order. This process holds a record batch, then one window, never the sources; the sources are
    read once and each row written and read once more, whatever the number of windows.
    """
    import tempfile

    import numpy as np

    order = np.asarray(order, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    where = np.full(order.max() + 1 if len(order) else 0, -1, dtype=np.int64)
    where[order] = np.arange(len(order))  # the output position of every source row (-1: not taken)
    if len(ends) == 1:
        yield _in_order(_taken(sources, columns, where), 0, int(ends[0]))
        return
    with tempfile.TemporaryDirectory(prefix=".windows-", dir=scratch) as tmp:
        files = _scatter(sources, columns, where, ends, Path(tmp))
        start = 0
        for k, end in enumerate(ends.tolist()):
            yield _in_order(_read_back(files[k]), start, end)
            files[k].unlink()
            start = end


def _taken(sources, columns, where):
    """Yield ``(rows, output positions)`` of each record batch of ``sources`` for its rows that
    ``where`` gives a position."""
    import numpy as np
    import pyarrow as pa

    base = 0
    for source in sources:
        for batch in source_batches(source, columns):
            w = where[base:base + batch.num_rows]
            base += batch.num_rows
            hit = np.flatnonzero(w >= 0)
            if len(hit):
                yield batch.take(pa.array(hit)), w[hit]
            if base >= len(where):
                return


def _scatter(sources, columns, where, ends, tmp: Path) -> list[Path]:
    """Append the rows of ``sources`` to one Arrow stream file per window of ``ends`` in ``tmp``,
    each with its output position as ``__position``; return the files."""
    import numpy as np
    import pyarrow as pa

    files = [tmp / f"{k}.arrow" for k in range(len(ends))]
    sinks, writers = [None] * len(ends), [None] * len(ends)
    try:
        for rows, at in _taken(sources, columns, where):
            window = np.searchsorted(ends, at, side="right")
            by_window = np.argsort(window, kind="stable")
            cuts = np.searchsorted(window[by_window], np.arange(len(ends) + 1))
            for k in np.flatnonzero(np.diff(cuts)).tolist():
                pick = by_window[cuts[k]:cuts[k + 1]]
                part = rows.take(pa.array(pick)).append_column("__position", pa.array(at[pick]))
                if writers[k] is None:
                    sinks[k] = pa.OSFile(str(files[k]), "wb")
                    writers[k] = pa.ipc.new_stream(sinks[k], part.schema)
                writers[k].write_batch(part)
    finally:
        for w, sink in zip(writers, sinks):
            if w is not None:
                w.close()
                sink.close()
    return files


def _read_back(path: Path):
    """Yield ``(rows, positions)`` of a window file written by :func:`_scatter` (read whole)."""
    import pyarrow as pa

    with pa.OSFile(str(path)) as f:
        table = pa.ipc.open_stream(f).read_all().combine_chunks()
    yield table.drop_columns(["__position"]), table.column("__position").to_numpy()


def _in_order(pieces, start: int, end: int):
    """The rows of ``pieces`` (``(rows, output positions)`` pairs covering ``start``..``end``)
    as one table in output order."""
    import numpy as np
    import pyarrow as pa

    tables, at = [], []
    for rows, positions in pieces:
        tables.append(rows)
        at.append(positions - start)
    rows = pa.Table.from_batches(tables) if isinstance(tables[0], pa.RecordBatch) else pa.concat_tables(tables)
    rows = rows.combine_chunks()
    del tables
    back = np.empty(end - start, dtype=np.int64)
    back[np.concatenate(at)] = np.arange(end - start)
    return rows.take(pa.array(back))
