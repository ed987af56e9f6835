"""Writing files so a failure never leaves a half-written one, and reading JSONL with file:line errors.

Example::

    from medtune.files import atomic_dir, atomic_output, atomic_write_text, guard_outputs, iter_jsonl
    guard_outputs({"-o": "runs/m"}, {"--adapter": "runs/m/lora"})  # MedtuneError: one inside the other
    atomic_write_text("runs/eval/metrics.json", text)      # the old file stays until the new one is whole
    with atomic_output("data/train.jsonl") as tmp:          # a sibling temp file, renamed on success
        tmp.write_text(body, encoding="utf-8")
    with atomic_dir("runs/merged") as tmp:                 # a sibling temp dir, swapped in on success
        model.save_pretrained(tmp)
    for line, row in iter_jsonl("data/train.jsonl"):        # MedtuneError "data/train.jsonl:17: ..."
        ...
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medtune.errors import MedtuneError, where


@contextmanager
def atomic_output(path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; it replaces ``path`` when the block ends
    without an exception and is removed otherwise (``path`` is then left as it was).

    The name is unique per call, so concurrent writers of one path never share a temp file.
    """
    path = Path(path)
    if path.is_dir():
        raise MedtuneError(f"{path}: is a directory; give a file path for this output")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path) -> Iterator[Path]:
    """Yield a new empty temporary sibling directory of ``path``; when the block ends without an
    exception it takes ``path``'s place (an old ``path`` is removed only then), otherwise it is
    removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.mkdir()
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f".{path.name}.{secrets.token_hex(4)}.old")
            os.replace(path, old)  # two renames: the old dir is gone only once the new one is in place
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if path.exists() or path.is_symlink():
                path.unlink()
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _real(path, flag: str | None = None) -> Path:
    """``path`` absolute with every symlink resolved; a symlink loop is an error naming ``flag``
    when given (an output), else kept as written (an input: reading it reports the loop)."""
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError):  # a symlink loop
        if flag:
            raise MedtuneError(f"{flag} '{path}': a symlink loop; fix the link or write elsewhere") from None
        return Path(os.path.abspath(Path(path).expanduser()))


def guard_outputs(outputs: dict, inputs: dict) -> None:
    """Refuse (:class:`MedtuneError`) when an output path equals or lies inside an input path, or
    an input lies inside an output, compared after resolving symlinks.

    ``outputs`` and ``inputs`` map a flag (``"-o"``, ``"--adapter"``) to a path or a list of paths;
    ``None`` entries are ignored. Hub ids and other names that are not local paths compare as
    relative paths, which a real output never equals unless it is one."""
    ins = [(flag, p, _real(p)) for flag, paths in inputs.items() for p in _as_list(paths)]
    outs = [(flag, p, _real(p, flag)) for flag, paths in outputs.items() for p in _as_list(paths)]
    for out_flag, out, real_out in outs:
        for in_flag, given, real_in in ins:
            if real_out == real_in:
                how = "is"
            elif real_out.is_relative_to(real_in):
                how = "lies inside"
            elif real_in.is_relative_to(real_out):
                how = "contains"
            else:
                continue
            raise MedtuneError(f"{out_flag} '{out}' {how} the input {in_flag} '{given}'; "
                               "write to another path (medtune never writes over its own inputs)")
    for i, (flag_a, a, real_a) in enumerate(outs):
        for flag_b, b, real_b in outs[i + 1:]:
            if real_a == real_b:
                raise MedtuneError(f"{flag_a} '{a}' and {flag_b} '{b}' are the same path; "
                                   "give each output its own path")


def _as_list(paths) -> list:
    if paths is None:
        return []
    if isinstance(paths, (str, os.PathLike)):
        return [paths]
    return [p for p in paths if p is not None]


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_output`."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_output`."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


class JsonLineError(MedtuneError):
    """A JSONL line that is not a JSON object; ``reason`` is the message without ``file:line``."""

    def __init__(self, reason: str, place: str | None = None):
        super().__init__(f"{place}: {reason}" if place else reason)
        self.reason = reason


def parse_json_object(line: str | bytes, place: str | None = None) -> dict:
    """Return the JSON object on one line; raise :class:`JsonLineError` naming ``place`` (file:line)."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        raise JsonLineError(f"invalid JSON ({e.msg} at column {e.colno})", place) from None
    except UnicodeDecodeError:
        raise JsonLineError("invalid JSON (not UTF-8)", place) from None
    if not isinstance(value, dict):
        raise JsonLineError(f"expected a JSON object per line, got {type(value).__name__}", place)
    return value


def numbered_lines(text: str) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, line)`` for the non-blank lines of ``text`` (numbers count from 1)."""
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip():
            yield n, line


def iter_jsonl(path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line number, object)`` for each non-blank line of the UTF-8 JSONL file ``path``,
    read lazily; a bad line raises :class:`JsonLineError` ``path:line: ...``."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                yield n, parse_json_object(line, where(path, n))
