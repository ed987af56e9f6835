"""Convert data files of any supported layout into one unified JSONL file, in parallel, streaming.

Large JSONL / text inputs are cut into byte ranges at newlines and converted by worker processes
(``workers``); results are written in input order, so the output is the same for any worker count.
Memory stays bounded by a few chunks in flight. Other containers (JSON arrays, CSV, Parquet) are
read by the main process.

Example::

    from medtune.data.readers.convert import ConvertOptions, convert_files
    tallies = convert_files(["huatuo.json", "chatdoctor.json"], "sft.jsonl", ConvertOptions())
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from medtune.data.parallel import default_workers, parallel_map
from medtune.data.readers.formats import SHAPES
from medtune.data.readers.stream import (
    ReadOptions,
    Tally,
    check_readable,
    container_kind,
    detect_encoding,
    is_wide,
    iter_records,
    jsonl_chunks,
)
from medtune.errors import MedtuneError
from medtune.files import atomic_output

__all__ = ["ConvertOptions", "convert_files", "dump_record", "read_plan"]

CHUNK_BYTES = 4 << 20


@dataclass
class ConvertOptions:
    """What ``medtune data convert`` was asked: read options plus parallelism."""

    read: ReadOptions = field(default_factory=lambda: ReadOptions(on_error="count", keep_meta=True))
    workers: int = 0  # 0: one per core (at most 8)
    chunk_bytes: int = CHUNK_BYTES



def dump_record(rec: dict) -> str:
    """One JSONL line (UTF-8 text kept readable, no trailing newline)."""
    return json.dumps(rec, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# work units


@dataclass(frozen=True)
class Piece:
    """One unit of work: a whole file, or a byte range of a line file."""

    path: str
    read: ReadOptions
    byte_range: tuple[int, int, int] | None = None


def read_plan(path, read: ReadOptions, chunk_bytes: int = CHUNK_BYTES) -> list[Piece]:
    """Split ``path`` into pieces: byte ranges for JSONL / text, the whole file otherwise.

    The format is resolved here from the first record so every piece reads the same way.
    """
    p = Path(path)
    check_readable(p)
    enc = read.encoding or detect_encoding(p)
    kind = container_kind(p, enc)
    read = replace(read, encoding=enc, format=_resolve_format(p, read))
    if kind not in ("jsonl", "lines") or is_wide(enc) or p.stat().st_size <= chunk_bytes:
        return [Piece(str(p), read)]
    return [Piece(str(p), read, chunk) for chunk in jsonl_chunks(p, chunk_bytes)]


def _resolve_format(path: Path, read: ReadOptions) -> str:
    """The explicit format, or the one detected from the first readable row of ``path``."""
    if read.format != "auto":
        return read.format
    probe = Tally(str(path))
    first = next(iter_records(path, replace(read, on_error="count"), probe), None)
    # Keep per-record fallback detection for files mixing layouts of one shape.
    return "auto" if first is None else f"auto:{probe.format}"


def run_piece(piece: Piece) -> tuple[str, Tally]:
    """Convert one piece; return its JSONL text and tally."""
    tally = Tally(piece.path)
    lines = [dump_record(rec) for rec in iter_records(piece.path, piece.read, tally, piece.byte_range)]
    return "".join(line + "\n" for line in lines), tally



def _piece_size(piece: Piece) -> int:
    if piece.byte_range:
        return piece.byte_range[1] - piece.byte_range[0]
    return Path(piece.path).stat().st_size


def convert_files(inputs, out, options: ConvertOptions | None = None,
                  progress: Callable[[int], None] | None = None) -> list[Tally]:
    """Convert ``inputs`` into the JSONL file ``out`` (written atomically); one tally per input.

    All inputs must give one record shape. ``progress(n_bytes)`` is called as pieces finish.
    When no record is written, ``out`` is left as it was (a previous good output survives).
    """
    options = options or ConvertOptions()
    plans = [read_plan(p, options.read, options.chunk_bytes) for p in inputs]
    tallies = {str(Path(p)): Tally(str(Path(p))) for p in inputs}
    out, shapes = Path(out), {}
    out.parent.mkdir(parents=True, exist_ok=True)
    pieces = [piece for plan in plans for piece in plan]
    try:
        with atomic_output(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for piece, (text, tally) in zip(pieces, parallel_map(run_piece, pieces,
                                                                 default_workers(options.workers))):
                _check_shape(shapes, piece.path, tally.format)
                tallies[piece.path].merge(tally)
                tallies[piece.path].encoding = piece.read.encoding
                f.write(text)
                if progress:
                    progress(_piece_size(piece))
            if not any(t.written for t in tallies.values()):
                raise _NothingWritten
    except _NothingWritten:
        pass
    return list(tallies.values())


class _NothingWritten(Exception):
    """Raised inside the atomic write so that an empty result does not replace ``out``."""


def _check_shape(shapes: dict, path: str, fmt: str) -> None:
    if not fmt:
        return
    shapes.setdefault(path, SHAPES[fmt])
    first_path, first = next(iter(shapes.items()))
    if SHAPES[fmt] != first:
        raise MedtuneError(f"{path}: format {fmt} gives {SHAPES[fmt]} records, but {first_path} gives "
                           f"{first} records; convert files of different shapes separately")
