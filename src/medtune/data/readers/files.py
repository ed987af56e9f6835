"""Whole data files read into unified records: what training and evaluation load.

Example::

    from medtune.data.readers.files import read_files
    files = read_files(["sft.jsonl"])
    files[0].records[0]["messages"]
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from medtune.data.readers.formats import SHAPES
from medtune.data.readers.stream import ReadOptions, read_all
from medtune.errors import MedtuneError

if TYPE_CHECKING:
    import datasets


@dataclass
class FileData:
    """One data file read into unified records."""

    path: str
    format: str
    records: list[dict]
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    sha256: str = ""  # hex digest of the file's bytes

    @property
    def n_records(self) -> int:
        return len(self.records)

    @property
    def shape(self) -> str:
        return SHAPES[self.format]


def read_file(path, format: str = "auto", locate: bool = False) -> FileData:
    """Read one data file (JSONL, JSON array, ``.txt``, CSV/TSV, Parquet) into unified records.

    Raises :class:`MedtuneError` naming ``file:line`` and the field for any problem; empty records
    are skipped and counted in :attr:`FileData.skipped`. ``locate``: each record keeps its
    ``file:line`` (``records.origin``), for errors found later (training's template checks).
    """
    records, tally = read_all(path, ReadOptions(format=format, on_error="bad", locate=locate))
    return FileData(str(path), tally.format, records, dict(tally.skipped), file_sha256(path))


def file_sha256(path) -> str:
    """Return the hex sha256 of a file's bytes, read a MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_same_shape(files: list[FileData]) -> None:
    """Raise a one-line error unless every file gives records of the first file's shape."""
    if not files:
        raise MedtuneError("no data files given")
    first = files[0]
    for f in files[1:]:
        if f.shape != first.shape:
            raise MedtuneError(
                f"{f.path}: format {f.format} gives {f.shape} records, but {first.path} "
                f"(format {first.format}) gives {first.shape} records; all files must have one shape"
            )


def read_files(paths, format: str = "auto", locate: bool = False) -> list[FileData]:
    """Read several files; all must resolve to the same record shape."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = [read_file(p, format, locate) for p in paths]
    check_same_shape(files)
    return files


def to_dataset(files) -> datasets.Dataset:
    """Concatenate the records of ``files`` into a ``datasets.Dataset``."""
    if isinstance(files, FileData):
        files = [files]
    files = list(files)
    check_same_shape(files)
    import datasets

    return datasets.Dataset.from_list([r for f in files for r in f.records])

