"""Stream unified records out of data files of any size, counting every row that does not make it.

Containers: JSONL (also misnamed ``.json``), JSON arrays, JSON objects keyed by id (PubMedQA),
one pretty-printed JSON object, ``.txt`` (one document per non-blank line), ``.csv`` / ``.tsv``
(header row; ``line`` is the CSV line) and ``.parquet`` (``line`` is the row number).
Encodings: UTF-8 (BOM tolerated), UTF-16 and UTF-32 with a BOM, and GB18030 — detected from the
first MiB unless ``encoding`` is given. JSONL and text files are read line by line, however long
their lines (and can be read in byte ranges, which is how ``medtune data convert`` spreads one file
over several processes); JSON arrays, keyed objects and UTF-16 / UTF-32 files are read whole.

Three policies for rows that do not become records (``on_error``):

- ``"bad"`` (training): a broken row raises a one-line :class:`MedtuneError` naming ``file:line`` and
  the field; a well-formed but empty record is skipped and counted.
- ``"raise"`` (``--strict``): every row that does not become a record raises.
- ``"count"`` (``medtune data`` default): every such row is skipped and counted by reason in a
  :class:`Tally`, with its ``file:line`` kept as an example.

>>> from medtune.data.readers.stream import Tally, iter_records
>>> tally = Tally("a.jsonl")
>>> # records = list(iter_records("a.jsonl", on_error="count", tally=tally)); print(tally.skipped)
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from medtune.data.readers import formats
from medtune.data.readers.records import ORIGIN
from medtune.errors import MedtuneError, where

__all__ = ["Tally", "detect_encoding", "is_wide", "iter_records", "jsonl_chunks", "line_file"]

SAMPLE_BYTES = 1 << 20
MAX_LINE_BYTES = 64 << 20  # one record's line; longer ones are refused instead of filling memory
COMPRESSED = {".gz": "gzip", ".zst": "zstd"}
EXAMPLES_PER_REASON = 5
_INDEX = re.compile(r"\[\d+\]")
# Record keys kept by convert next to the unified fields (source name -> our name).
_META = (("id", "id"), ("realidx", "id"), ("_id", "id"), ("source", "source"),
         ("cate1", "category"), ("department", "category"), ("Department", "category"),
         ("label", "category"), ("category", "category"))


@dataclass
class Tally:
    """What happened to the rows of one input: read, written, and each skip reason counted."""

    path: str
    format: str = ""
    encoding: str = ""
    read: int = 0
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> ["file:line: msg"]

    def skip(self, reason: str, line, message: str | None = None) -> None:
        self.skipped[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES_PER_REASON:
            shown.append(f"{where(self.path, line)}: {message or reason}")

    def merge(self, other: Tally) -> None:
        """Add ``other``'s counts (a later chunk of the same file) to this tally."""
        self.format = self.format or other.format
        self.read += other.read
        self.written += other.written
        self.skipped.update(other.skipped)
        for reason, shown in other.examples.items():
            mine = self.examples.setdefault(reason, [])
            mine.extend(shown[: EXAMPLES_PER_REASON - len(mine)])

    def to_dict(self) -> dict:
        return {"path": self.path, "format": self.format, "encoding": self.encoding,
                "read": self.read, "written": self.written, "skipped": dict(self.skipped),
                "examples": self.examples}


class RowError(Exception):
    """A row that could not be parsed (bad bytes, broken JSON); ``reason`` is its count key."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# ---------------------------------------------------------------------------------------------
# bytes -> text


def detect_encoding(path, sample: int = SAMPLE_BYTES) -> str:
    """'utf-8-sig', 'utf-32', 'utf-16', 'utf-8' or 'gb18030', judged from the first ``sample`` bytes."""
    with open(path, "rb") as f:
        head = f.read(sample)
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):  # before UTF-16: FF FE 00 00
        return "utf-32"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    for enc in ("utf-8", "gb18030"):
        try:
            codecs.getincrementaldecoder(enc)().decode(head, final=len(head) < sample)
            return enc
        except UnicodeDecodeError:
            continue
    return "utf-8"  # undecodable lines are then reported one by one


def is_wide(enc: str) -> bool:
    """True for UTF-16 / UTF-32, whose newlines are not the byte 0x0A: such files are read whole."""
    return codecs.lookup(enc).name.startswith(("utf-16", "utf-32"))


def _decode_error(path, line, enc: str, data: bytes, e: UnicodeDecodeError) -> RowError:
    hint = "pass --encoding (e.g. gb18030) or re-save the file as UTF-8" if enc.startswith("utf-8") \
        else "pass --encoding or re-save the file as UTF-8"
    name = "UTF-8" if enc.startswith("utf-8") else enc
    return RowError("undecodable bytes",
                    f"not {name} text (byte 0x{data[e.start]:02x}); {hint}")


def _read_text(path: Path, enc: str) -> str:
    data = _read_bytes(path)
    try:
        return data.decode(enc)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise MedtuneError(f"{where(path, line)}: {_decode_error(path, line, enc, data, e)}") from None


def _read_bytes(path: Path) -> bytes:
    check_readable(path)
    try:
        return path.read_bytes()
    except OSError as e:
        raise MedtuneError(f"{path}: cannot read ({e.strerror or e})") from None


def check_readable(path: Path) -> None:
    """Raise a one-line error for a missing path or a directory (with a did-you-mean)."""
    from medtune.errors import did_you_mean

    if path.is_dir():
        raise MedtuneError(f"{path}: is a directory, not a data file")
    if not path.is_file():
        hint = ""
        if path.parent.is_dir():
            hint = did_you_mean(path.name, [p.name for p in path.parent.iterdir()])
            hint = hint if hint.startswith(" (did you mean") else ""
        raise MedtuneError(f"{path}: no such file{hint}")


# ---------------------------------------------------------------------------------------------
# containers -> (line, row) pairs; a row is a dict/any JSON value, or a RowError


def container_kind(path: Path, enc: str) -> str:
    """'lines' (.txt), 'csv', 'tsv', 'parquet', 'jsonl' or 'json' (array / keyed / single object)."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".parquet"):
        return suffix[1:]
    if suffix == ".txt":
        return "lines"
    if is_wide(enc):
        body = _read_text(path, enc).lstrip("\ufeff \t\r\n")
    else:
        with open(path, "rb") as f:
            head = f.read(SAMPLE_BYTES)
            if b"\n" not in head.lstrip(b"\xef\xbb\xbf \t\r\n"):
                head += f.readline()  # a first line longer than the sample: judge it whole
        body = head.decode(enc, errors="replace").lstrip("\ufeff \t\r\n")
    if body.startswith("["):
        return "json"
    if body.startswith("{"):
        first = body.split("\n", 1)[0]
        try:
            value = json.loads(first)
            return "jsonl" if isinstance(value, dict) and not _is_keyed(value) else "json"
        except (json.JSONDecodeError, RecursionError):
            return "json" if first.strip() == "{" or "\n" not in body else "jsonl"
    return "notjson" if body else "empty"


def iter_chunks(path, chunk_bytes: int = 8 << 20) -> Iterator[tuple[int, int, int]]:
    """``(start, end, first_line)`` byte ranges that split a line file at newlines, lazily."""
    size, start, line = Path(path).stat().st_size, 0, 1
    with open(path, "rb") as f:
        while start < size:
            f.seek(start)
            data = f.read(chunk_bytes)
            if start + len(data) < size:
                data += f.readline()  # finish the last line of the chunk
            end = start + len(data)
            yield start, end, line
            line += data.count(b"\n")
            start = end


def jsonl_chunks(path, chunk_bytes: int = 8 << 20) -> list[tuple[int, int, int]]:
    """All of :func:`iter_chunks` (one pass over the file, one chunk in memory at a time)."""
    return list(iter_chunks(path, chunk_bytes))


def line_file(path: Path, enc: str, plain: bool, byte_range=None) -> Iterator[tuple[int, object]]:
    """Rows of a JSONL (``plain=False``) or text file, or of one ``(start, end, first_line)`` byte
    range of it; undecodable lines and broken JSON come back as :class:`RowError` rows. The file
    is read a chunk at a time."""
    if is_wide(enc):
        yield from _wide_lines(path, enc, plain)
        return
    for chunk in [byte_range] if byte_range else iter_chunks(path):
        yield from _line_range(path, enc, plain, chunk)


def _wide_lines(path: Path, enc: str, plain: bool) -> Iterator[tuple[int, object]]:
    """Rows of a UTF-16 / UTF-32 line file, decoded whole."""
    for n, text in enumerate(_read_text(path, enc).lstrip("\ufeff").split("\n"), 1):
        if text.strip():
            yield n, _line_row(text.rstrip("\r"), plain)


def _line_range(path: Path, enc: str, plain: bool, byte_range) -> Iterator[tuple[int, object]]:
    start, end, line = byte_range
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    if start == 0 and data.startswith(codecs.BOM_UTF8):
        data = data[3:]
    for n, raw in enumerate(data.split(b"\n"), line):
        if raw.strip():
            yield n, _parse_line(path, n, raw, enc, plain)


def _parse_line(path: Path, n: int, raw: bytes, enc: str, plain: bool):
    """One non-blank line of bytes as a row (a dict, any JSON value) or a :class:`RowError`."""
    if len(raw) > MAX_LINE_BYTES:
        return RowError("line too long", f"a line of {len(raw) / 2**20:.0f} MiB, over the "
                        f"{MAX_LINE_BYTES >> 20} MiB one record may have; split it (a .txt corpus "
                        "holds one document per line)")
    try:
        text = raw.decode("utf-8" if enc == "utf-8-sig" else enc).rstrip("\r")
    except UnicodeDecodeError as e:
        return _decode_error(path, n, enc, raw, e)
    return _line_row(text, plain)


def _line_row(text: str, plain: bool):
    """One line as a row: ``{"text": ...}`` (``plain``), its JSON value, or a :class:`RowError`."""
    if plain:
        return {"text": text}
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        reason = "broken JSON line" if text.lstrip().startswith("{") else "invalid JSON"
        return RowError(reason, f"invalid JSON ({e.msg} at column {e.colno})")
    except RecursionError:
        return RowError("nested too deeply", "JSON nested too deeply to read")


def compression_of(path) -> str | None:
    """'gzip' or 'zstd' for a ``.gz`` / ``.zst`` file, else None."""
    return COMPRESSED.get(Path(path).suffix.lower())


def _compressed_rows(path: Path, enc: str) -> Iterator[tuple[int, object]]:
    """Rows of a gzip / zstd compressed JSONL or text file (``x.jsonl.gz``, ``x.txt.zst``),
    decompressed as a stream (pyarrow's codecs); a truncated file is a one-line error."""
    import io

    import pyarrow as pa

    inner = Path(path.stem).suffix.lower()
    if inner not in (".jsonl", ".json", ".txt"):
        raise MedtuneError(f"{path}: compressed {inner or 'files without a suffix'} is not read; "
                           "compress .jsonl or .txt files (x.jsonl.gz, x.txt.zst)")
    check_readable(path)
    n = 0
    try:
        with io.BufferedReader(pa.input_stream(str(path), compression=compression_of(path))) as f:
            for n, raw in enumerate(f, 1):
                raw = raw[3:] if n == 1 and raw.startswith(codecs.BOM_UTF8) else raw
                if raw.strip():
                    yield n, _parse_line(path, n, raw.rstrip(b"\n"), enc, inner == ".txt")
    except (OSError, EOFError, pa.ArrowException) as e:
        raise MedtuneError(f"{where(path, n + 1)}: cannot decompress ({e}); the file is truncated or "
                           "corrupt: download or compress it again") from None


def _json_rows(path: Path, enc: str) -> Iterator[tuple[int, object]]:
    """Rows of a JSON array, of an object keyed by id (PubMedQA), or one record object."""
    text = _read_text(path, enc).lstrip("\ufeff")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise MedtuneError(f"{where(path, e.lineno)}: invalid JSON ({e.msg} at column {e.colno})") \
            from None
    except RecursionError:
        raise MedtuneError(f"{path}: JSON nested too deeply to read") from None
    if isinstance(value, list):
        lines = _ElementLines(text)
        for i, row in enumerate(value):
            yield lines, i, row
    elif isinstance(value, dict) and _is_keyed(value):
        for key, row in value.items():
            line = _KeyLine(text, key)
            yield None, line, {"id": key, **row} if isinstance(row, dict) else {"id": key, "answer": row}
    else:
        yield None, 1, value


def _is_keyed(value: dict) -> bool:
    """A JSON object mapping ids to records (or to labels) rather than one record."""
    if len(value) < 2 or formats.detect_format(value) is not None:
        return False
    rows = list(value.values())
    if all(isinstance(r, dict) for r in rows):
        return True
    # id -> label maps (PubMedQA's answer key) have numeric ids; other string maps are records
    return all(isinstance(r, str) for r in rows) and all(str(k).isdigit() for k in value)


class _KeyLine:
    """The line of ``"key":`` in a keyed JSON object, found only when an error needs it."""

    def __init__(self, text: str, key: str):
        self.text, self.key = text, key

    def __str__(self) -> str:
        return str(self.text.count("\n", 0, max(self.text.find(json.dumps(self.key)), 0)) + 1)


class _ElementLines:
    """index -> 1-based line of element ``index`` of a JSON array, computed once on first use."""

    def __init__(self, text: str):
        self.text, self.starts = text, None

    def __call__(self, i: int) -> int:
        if self.starts is None:
            self.starts = self._scan()
        return self.starts[i]

    def _scan(self) -> list[int]:
        ws, decoder, text, out = re.compile(r"[ \t\n\r,]*"), json.JSONDecoder(), self.text, []
        pos = ws.match(text, text.index("[") + 1).end()
        line, last = 1, 0
        while pos < len(text) and text[pos] != "]":
            line += text.count("\n", last, pos)
            last = pos
            out.append(line)
            _, end = decoder.raw_decode(text, pos)
            pos = ws.match(text, end).end()
        return out


def _csv_rows(path: Path, enc: str, delimiter: str) -> Iterator[tuple[int, object]]:
    check_readable(path)
    with open(path, encoding=enc, newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader, None)
            if header is None:
                return
            header = [h.strip().lstrip("\ufeff") for h in header]
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    yield reader.line_num, RowError(
                        "wrong number of columns",
                        f"{len(row)} columns, the header has {len(header)}")
                    continue
                yield reader.line_num, {h: v for h, v in zip(header, row) if h}
        except UnicodeDecodeError as e:
            raise MedtuneError(
                f"{where(path, reader.line_num + 1)}: not {enc} text (byte 0x{e.object[e.start]:02x}); "
                "pass --encoding (e.g. gb18030) or re-save the file as UTF-8") from None


def _parquet_rows(path: Path) -> Iterator[tuple[int, object]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    check_readable(path)
    n = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=8192):
            for row in batch.to_pylist():
                n += 1
                yield n, row
    except pa.ArrowException as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MedtuneError(f"{where(path, n + 1 if n else None)}: not a readable Parquet file ({first})") \
            from None


def iter_rows(path: Path, enc: str, kind: str, fmt: str, byte_range=None):
    """``(line, row)`` for every row of ``path``; ``line`` may be a callable for JSON arrays."""
    if kind == "notjson" and fmt != "text":
        raise MedtuneError(f"{where(path, 1)}: not JSON or JSONL (a JSON array or one object per "
                           "line expected); plain text needs a .txt file or format text")
    if kind in ("lines", "notjson"):
        yield from line_file(path, enc, plain=True, byte_range=byte_range)
    elif kind == "jsonl":
        yield from line_file(path, enc, plain=False, byte_range=byte_range)
    elif kind in ("csv", "tsv"):
        yield from _csv_rows(path, enc, "," if kind == "csv" else "\t")
    elif kind == "parquet":
        yield from _parquet_rows(path)
    elif kind == "json":
        for lines, i, row in _json_rows(path, enc):
            yield (i if lines is None else _Line(lines, i)), row


class _Line:
    """A lazily computed line number (JSON arrays find element lines only when one is needed)."""

    def __init__(self, lines: _ElementLines, index: int):
        self.lines, self.index = lines, index

    def __str__(self) -> str:
        return str(self.lines(self.index))


# ---------------------------------------------------------------------------------------------
# rows -> unified records


@dataclass
class ReadOptions:
    """How rows become records: format, error policy, column renames, metadata."""

    format: str = "auto"  # a name, "auto", or "auto:NAME" (NAME already detected for this file)
    on_error: str = "bad"  # bad | raise | count
    encoding: str | None = None
    columns: dict[str, str] = field(default_factory=dict)  # source column -> our column
    keep_meta: bool = False
    source: str | None = None  # the `source` of records without their own
    locate: bool = False  # each record keeps its "file:line" under records.ORIGIN (training's errors)


def iter_records(path, options: ReadOptions | None = None, tally: Tally | None = None,
                 byte_range=None, with_lines: bool = False) -> Iterator:
    """Yield the unified records of ``path`` (see the module docstring for the error policies);
    ``(line, record)`` pairs with ``with_lines``."""
    opts, p = options or ReadOptions(), Path(path)
    check_readable(p)
    tally = tally if tally is not None else Tally(str(path))
    packed = compression_of(p)
    enc = opts.encoding or ("utf-8" if packed else detect_encoding(p))
    tally.encoding = enc
    kind = ("lines" if Path(p.stem).suffix.lower() == ".txt" else "jsonl") if packed else container_kind(p, enc)
    auto = opts.format == "auto" or opts.format.startswith("auto:")
    fmt = opts.format.removeprefix("auto:") if auto else formats.format_name(opts.format)
    fmt = "text" if kind == "lines" and fmt == "auto" else fmt
    converter = _Converter(p, fmt, auto, opts, tally)
    rows = _compressed_rows(p, enc) if packed else iter_rows(p, enc, kind, fmt, byte_range)
    for line, row in rows:
        rec = converter.convert(line, row)
        if rec is not None:
            yield (line, rec) if with_lines else rec


class _Converter:
    """One row -> one record under the options' policy, updating the tally."""

    def __init__(self, path: Path, fmt: str, auto: bool, opts: ReadOptions, tally: Tally):
        """``fmt``: the format, or "auto" to detect it; ``auto``: records may fall back to another
        detected format of the same shape."""
        self.path, self.auto, self.fmt, self.opts, self.tally = path, auto, fmt, opts, tally
        self.shape = None if fmt == "auto" else formats.SHAPES[fmt]
        if fmt != "auto":
            tally.format = fmt

    def convert(self, line, row) -> dict | None:
        self.tally.read += 1
        try:
            if isinstance(row, RowError):
                raise row
            rec = self._read(line, row)
        except RowError as e:
            return self._drop(line, e.reason, str(e), bad=True)
        except formats.Skip as s:
            return self._drop(line, s.reason, s.reason, bad=False)
        except formats.Bad as b:
            keys = f"; record keys: {formats.keys_text(b.keys)}" if b.keys is not None else ""
            message = f"{b} (format {self.fmt}){keys}"
            return self._drop(line, _INDEX.sub("[]", str(b)), message, bad=True)
        self.tally.written += 1
        return rec

    def _drop(self, line, reason: str, message: str, bad: bool):
        if self.opts.on_error == "raise" or (bad and self.opts.on_error == "bad"):
            raise MedtuneError(f"{where(self.path, line)}: {message}")
        self.tally.skip(reason, line, message)

    def _read(self, line, row) -> dict:
        if not isinstance(row, dict):
            raise formats.Bad(f"record must be a JSON object, got {formats.json_type(row)}")
        if self.opts.columns:
            row = {self.opts.columns.get(k, k): v for k, v in row.items()}
        fmt = self._format_of(line, row)
        rec = formats.READERS[fmt](row)
        if self.opts.keep_meta:
            _add_meta(rec, row, self.opts.source or self.path.stem)
        if self.opts.locate:
            rec[ORIGIN] = where(self.path, line)
        return rec

    def _format_of(self, line, row: dict) -> str:
        if self.fmt == "auto":
            found = formats.detect_format(row)
            if found is None:
                raise MedtuneError(
                    f"{where(self.path, line)}: cannot detect the data format from keys "
                    f"[{formats.keys_text(row)}]; pass format= one of {', '.join(formats.FORMATS)}")
            self.fmt, self.shape, self.tally.format = found, formats.SHAPES[found], found
            return found
        if self.auto:  # a file mixing layouts of one shape (Zhongjing: dialogues + safety rows)
            found = formats.detect_format(row)
            if found is not None and found != self.fmt and formats.SHAPES[found] == self.shape:
                return found
        return self.fmt


def _add_meta(rec: dict, row: dict, default_source: str) -> None:
    """Copy id / source / category from the raw row; ``source`` defaults to the file's stem."""
    for key, name in _META:
        value = row.get(key)
        if name not in rec and isinstance(value, (str, int)) and not isinstance(value, bool) \
                and str(value).strip():
            rec[name] = value
    rec.setdefault("source", default_source)
    if "options" in rec and "subject" not in rec:
        rec["subject"] = rec["source"]


def read_all(path, options: ReadOptions) -> tuple[list[dict], Tally]:
    """All records of ``path`` and its tally; an empty result is an error naming the skips."""
    tally = Tally(str(path))
    records = list(iter_records(path, options, tally))
    if not records:
        counts = ", ".join(f"{reason} {n}" for reason, n in tally.skipped.items())
        suffix = f" left after skipping: {counts}" if counts else ""
        raise MedtuneError(f"{path}: empty (no records{suffix})")
    return records, tally



def records_of_rows(name: str, rows, options: ReadOptions, tally: Tally) -> Iterator[dict]:
    """The unified records of ``(row_number, row)`` pairs read elsewhere (a ``datasets.Dataset``),
    under the same format detection and error policy as a file's rows."""
    opts = options
    auto = opts.format == "auto" or opts.format.startswith("auto:")
    fmt = opts.format.removeprefix("auto:") if auto else formats.format_name(opts.format)
    converter = _Converter(Path(name), fmt, auto, opts, tally)
    for line, row in rows:
        rec = converter.convert(line, row)
        if rec is not None:
            yield rec
