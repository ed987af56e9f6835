"""``data.train`` resolved and read into one on-disk record spool, a bounded amount at a time.

An entry is a data file (also ``.gz`` / ``.zst`` compressed JSONL or text), a directory (every data
file under it, sorted), a glob (``corpus/**/*.jsonl.gz``), a ``datasets.save_to_disk`` folder or a
Hugging Face dataset id (``hf:org/name[:split]``, or ``hf:/a/local/dataset/folder``). Records are
stored as JSON into one Arrow file (``$MEDTUNE_CACHE/records/<key>``, keyed by the inputs' hashes), so
tokenization reads any record by its index without holding the others. Example::

    corpus = read_corpus(["corpus/**/*.jsonl.gz", "hf:org/name:train"])
    corpus.files[0].sha256, len(corpus), corpus.records([3, 1]).load()
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medtune.data.readers.formats import SHAPES
from medtune.data.readers.stream import (
    COMPRESSED,
    ReadOptions,
    Tally,
    iter_records,
    records_of_rows,
)
from medtune.errors import MedtuneError

__all__ = ["Corpus", "InputFile", "SpooledRecords", "cache_root", "read_corpus", "resolve_inputs"]

DATA_SUFFIXES = (".jsonl", ".json", ".txt", ".csv", ".tsv", ".parquet")
SPOOL_VERSION = 3  # 3: JSON records; 2: records carry their file:line, so the path is part of the key
BATCH = 4096  # records per Arrow batch written


def cache_root() -> Path:
    """Return medtune's cache dir (``$MEDTUNE_CACHE`` or ~/.cache/medtune)."""
    return Path(os.environ.get("MEDTUNE_CACHE") or Path.home() / ".cache" / "medtune")


@dataclass
class InputFile:
    """One input as lineage records it: a file, a save_to_disk folder or a Hugging Face dataset."""

    path: str
    bucket: int = 0  # the index of the data.train entry it came from (curriculum buckets)
    kind: str = "file"  # file | saved (datasets.save_to_disk) | hf
    sha256: str = ""  # the file's bytes; a folder's files; an hf dataset's datasets fingerprint
    revision: str = ""  # saved: its datasets fingerprint; hf: the revision datasets resolved
    format: str = ""
    n_records: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def shape(self) -> str:
        return SHAPES[self.format]


@dataclass
class SpooledRecords:
    """The records at ``indices`` of a spool file, loaded only by whoever tokenizes them."""

    path: str
    indices: object  # numpy int64 array

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, part: slice) -> SpooledRecords:
        return SpooledRecords(self.path, self.indices[part])

    def load(self) -> list[dict]:
        import pyarrow as pa

        from medtune.data.tables import take_rows

        table = pa.ipc.open_file(pa.memory_map(self.path)).read_all()  # mapped, not read
        # by record batch: a take over the whole column would first copy the spool, per call
        return [json.loads(b) for b in take_rows(table, self.indices).column(0).to_pylist()]


@dataclass
class Corpus:
    """The inputs of a stage and their records spooled to disk, in input order."""

    files: list[InputFile]
    spool: Path

    def __len__(self) -> int:
        return sum(f.n_records for f in self.files)

    def buckets(self):
        """The bucket of every record, as a numpy array in spool order."""
        import numpy as np

        return np.repeat([f.bucket for f in self.files], [f.n_records for f in self.files])

    def records(self, indices) -> SpooledRecords:
        import numpy as np

        return SpooledRecords(str(self.spool), np.asarray(indices, dtype=np.int64))


def read_corpus(entries, format: str = "auto", mixed: bool = False) -> Corpus:
    """Resolve ``entries`` (see the module docstring) and spool their records; a spool written
    before for the same inputs and format is reused. Bad input raises one-line MedtuneErrors.

    All files must give one record shape, unless ``mixed``: then each entry's files must (a
    data.mixture trains text and conversation entries together)."""
    files = resolve_inputs(entries)
    for f in files:
        _fingerprint(f)
    key = [SPOOL_VERSION, format, [(f.kind, f.path, f.sha256, f.revision) for f in files]]
    key = json.dumps(key + ["mixed"] if mixed else key)
    dest = cache_root() / "records" / hashlib.sha256(key.encode()).hexdigest()[:24]
    if not (dest / "files.json").is_file():
        _write_spool(files, format, dest, mixed)
    saved = json.loads((dest / "files.json").read_text(encoding="utf-8"))
    for f, done in zip(files, saved):
        f.format, f.n_records, f.skipped = done["format"], done["n_records"], done["skipped"]
    return Corpus(files, dest / "records.arrow")


# ---------------------------------------------------------------------------------------------
# entries -> inputs


def resolve_inputs(entries) -> list[InputFile]:
    """Return one :class:`InputFile` per file / folder / dataset that ``entries`` name, in order."""
    if isinstance(entries, (str, os.PathLike)):
        entries = [entries]
    found = [f for bucket, entry in enumerate(entries) for f in _expand(str(entry), bucket)]
    if not found:
        raise MedtuneError("no data files given")
    return found


def _expand(entry: str, bucket: int) -> list[InputFile]:
    if entry.startswith("hf:"):
        return [InputFile(entry, bucket, "hf")]
    path = Path(entry)
    if glob.has_magic(entry):
        matched = sorted(p for p in glob.glob(entry, recursive=True) if Path(p).is_file())
        if not matched:
            raise MedtuneError(f"{entry}: the pattern matches no files")
        return [InputFile(p, bucket) for p in matched]
    if path.is_dir() and _is_saved_dataset(path):
        return [InputFile(entry, bucket, "saved")]
    if path.is_dir():
        matched = sorted(str(p) for p in path.rglob("*") if p.is_file() and _is_data_file(p))
        if not matched:
            raise MedtuneError(f"{entry}: the directory holds no data files "
                               f"({', '.join(DATA_SUFFIXES)}, optionally .gz / .zst)")
        return [InputFile(p, bucket) for p in matched]
    return [InputFile(entry, bucket)]


def _is_data_file(path: Path) -> bool:
    name = path.name.lower()
    for suffix in COMPRESSED:
        name = name.removesuffix(suffix)
    return name.endswith(DATA_SUFFIXES)


def _is_saved_dataset(path: Path) -> bool:
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


# ---------------------------------------------------------------------------------------------
# hashes and revisions


def _fingerprint(f: InputFile) -> None:
    from medtune.data.readers.files import file_sha256
    from medtune.data.readers.stream import check_readable

    if f.kind == "file":
        check_readable(Path(f.path))
        f.sha256 = file_sha256(f.path)
    elif f.kind == "saved":
        digest = hashlib.sha256()
        for p in sorted(Path(f.path).rglob("*")):
            if p.is_file():
                digest.update(str(p.relative_to(f.path)).encode() + b"\0" + file_sha256(p).encode())
        f.sha256 = digest.hexdigest()
        f.revision = _saved_dataset(f.path)._fingerprint
    else:
        ds = _hf_dataset(f.path)
        f.sha256 = ds._fingerprint
        files = ds.cache_files
        f.revision = Path(files[0]["filename"]).parent.name if files else ""


def _saved_dataset(path: str):
    from datasets import DatasetDict, load_from_disk

    ds = load_from_disk(path)
    if isinstance(ds, DatasetDict):
        if "train" not in ds:
            raise MedtuneError(f"{path}: a DatasetDict without a train split ({', '.join(ds)}); "
                               "save one split or name its folder")
        ds = ds["train"]
    return ds


def _hf_dataset(entry: str):
    """Load ``hf:name[:split]`` with datasets; offline without a cached copy is one line."""
    import datasets

    name, _, split = entry.removeprefix("hf:").partition(":")
    try:
        return datasets.load_dataset(name, split=split or "train")
    except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, ...)
        offline = os.environ.get("HF_DATASETS_OFFLINE", "") in ("1", "ON", "YES", "TRUE") \
            or os.environ.get("HF_HUB_OFFLINE", "") in ("1", "ON", "YES", "TRUE") or _is_connection(e)
        if offline and not Path(name).exists():
            raise MedtuneError(
                f"{entry}: offline and not in the datasets cache; download it where there is a "
                "network (datasets.load_dataset(...).save_to_disk(DIR)) and set data.train to DIR, "
                "its data files, or hf:/path/to/a/local/dataset/folder") from None
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MedtuneError(f"{entry}: cannot load the dataset ({reason})") from None


def _is_connection(e: Exception) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return any(word in text for word in ("connection", "offline", "resolve", "network"))


# ---------------------------------------------------------------------------------------------
# records -> spool


def _records(f: InputFile, options: ReadOptions, tally: Tally):
    if f.kind == "file":
        return iter_records(f.path, options, tally)
    ds = _saved_dataset(f.path) if f.kind == "saved" else _hf_dataset(f.path)
    return records_of_rows(f.path, enumerate(ds, 1), options, tally)


def _write_spool(files: list[InputFile], format: str, dest: Path, mixed: bool = False) -> None:
    """Pickle every record of ``files`` into ``dest/records.arrow`` (written atomically), a batch
    at a time; counts and formats go to ``dest/files.json``."""
    import pyarrow as pa

    from medtune.data.readers.files import check_same_shape

    tmp = dest.with_name(f".{dest.name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    schema = pa.schema([("record", pa.large_binary())])
    try:
        with pa.OSFile(str(tmp / "records.arrow"), "wb") as sink, pa.ipc.new_file(sink, schema) as w:
            for f in files:
                _spool_one(f, ReadOptions(format=format, on_error="bad", locate=True), w, schema)  # locate: errors name file:line
                for group in _shape_groups([g for g in files if g.format], mixed):
                    check_same_shape(group)
        done = [{k: v for k, v in asdict(f).items() if k in ("format", "n_records", "skipped")} for f in files]
        (tmp / "files.json").write_text(json.dumps(done), encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(dest, ignore_errors=True)
    try:
        tmp.rename(dest)
    except OSError:  # another process (torchrun rank) wrote the same spool first
        shutil.rmtree(tmp, ignore_errors=True)


def _shape_groups(files: list[InputFile], mixed: bool) -> list[list[InputFile]]:
    """The groups of files that must share one record shape: all of them, or (``mixed``) the
    files of each data.train entry."""
    if not mixed:
        return [files]
    return [[f for f in files if f.bucket == b] for b in sorted({f.bucket for f in files})] or [[]]


def _spool_one(f: InputFile, options: ReadOptions, writer, schema) -> None:
    import pyarrow as pa

    tally, batch = Tally(f.path), []
    for rec in _records(f, options, tally):
        batch.append(json.dumps(rec, ensure_ascii=False).encode())  # JSON, never pickle: a cache file runs no code
        if len(batch) == BATCH:
            writer.write_batch(pa.record_batch([pa.array(batch, pa.large_binary())], schema=schema))
            batch = []
    if batch:
        writer.write_batch(pa.record_batch([pa.array(batch, pa.large_binary())], schema=schema))
    if not tally.written:
        counts = ", ".join(f"{reason} {n}" for reason, n in tally.skipped.items())
        raise MedtuneError(f"{f.path}: empty (no records{' left after skipping: ' + counts if counts else ''})")
    f.format, f.n_records, f.skipped = tally.format, tally.written, dict(tally.skipped)
