"""Writing files so a failure never leaves a half-written one, and reading JSONL with file:line errors.

Example::

    from medtune.files import atomic_output, atomic_write_text, iter_jsonl
    atomic_write_text("runs/eval/metrics.json", text)      # the old file stays until the new one is whole
    with atomic_output("data/train.jsonl") as tmp:          # a sibling temp file, renamed on success
        tmp.write_text(body, encoding="utf-8")
    for line, row in iter_jsonl("data/train.jsonl"):        # MedtuneError "data/train.jsonl:17: ..."
        ...
"""

from __future__ import annotations

import json
import os
import secrets
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
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
