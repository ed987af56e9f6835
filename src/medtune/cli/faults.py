"""The CLI's error boundary: expected faults become one ``error:`` line and exit 2, never a traceback.

Example::

    medtune data convert locked.json -o out.jsonl     # error: locked.json: Permission denied  (exit 2)
    medtune -v data convert locked.json -o out.jsonl  # the same line, after the traceback

Expected faults are the ones a user causes or can fix: OS errors (permissions, a full disk, a
read-only directory, a symlink loop, a directory where a file belongs), undecodable text, broken
JSON / Parquet / Arrow data, data nested deeper than Python's recursion limit, a missing optional
extra, running out of memory, and value errors a library raises about a user's setting or file.
Anything else is a medtune bug: one ``internal error`` line and exit 1 (the traceback with
``--verbose``).
"""

from __future__ import annotations

import errno
import re
import sys
import traceback

# Optional dependencies -> the extra that installs them (pyproject.toml [project.optional-dependencies]).
EXTRAS = {"fastapi": "serve", "uvicorn": "serve", "openai": "serve", "httpx": "serve",
          "gradio": "web", "gguf": "export", "rouge_chinese": "eval", "jieba": "eval",
          "sacrebleu": "eval", "nltk": "eval", "bitsandbytes": "gpu", "liger_kernel": "gpu",
          "vllm": "vllm", "sqlalchemy": "db", "psycopg": "db", "bm25s": "rag", "Stemmer": "rag"}
# Libraries whose ValueError / TypeError means "your setting or file is wrong", not "medtune broke".
_LIBRARIES = ("transformers", "peft", "trl", "datasets", "tokenizers", "torch", "safetensors",
              "accelerate", "huggingface_hub", "yaml", "jinja2", "pyarrow", "numpy", "gguf")
_TEMP = re.compile(r"\.([^/]+)\.[0-9a-f]{8}\.tmp$")  # files.atomic_output's sibling -> the real name
_HINTS = {errno.ENOSPC: "the disk is full; free space or write elsewhere",
          errno.EROFS: "read-only file system; write elsewhere",
          errno.EACCES: "check the permissions or write elsewhere",
          errno.ELOOP: "a symlink loop; fix the link"}


def missing_extra_message(module: str) -> str:
    """``"gradio is not installed; pip install 'medtune[web]'"`` for an optional dependency."""
    top = module.split(".")[0]
    extra = EXTRAS.get(top)
    how = f"pip install 'medtune[{extra}]'" if extra else f"pip install {top}"
    return f"{top} is not installed; run: {how}"


def require_extras(*modules: str) -> None:
    """Raise a one-line :class:`MedtuneError` naming the pip install when an optional module is
    missing; call it before any model loads."""
    import importlib.util

    from medtune.errors import MedtuneError

    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package missing, or a None in sys.modules
            found = False
        if not found:
            raise MedtuneError(missing_extra_message(module))


def fault_message(exc: BaseException) -> str | None:
    """The one-line message for an expected fault, or None when ``exc`` is a medtune bug."""
    if isinstance(exc, ModuleNotFoundError) and exc.name and exc.name.split(".")[0] in EXTRAS:
        return missing_extra_message(exc.name)
    if isinstance(exc, OSError):
        return _os_message(exc)
    if isinstance(exc, UnicodeError):
        return f"text that is not valid in its encoding ({_first_line(exc)}); pass --encoding " \
               "or re-save the file as UTF-8"
    if isinstance(exc, RecursionError):
        return "data nested too deeply to read (beyond Python's recursion limit); flatten the record"
    if isinstance(exc, MemoryError):
        return "out of memory; use a smaller batch, fewer workers or a smaller input"
    if isinstance(exc, LookupError) and str(exc).startswith("unknown encoding"):
        return f"{exc}; pass a Python codec name such as utf-8, utf-16 or gb18030"
    name = _library_of(exc)
    if _is_kind(exc, "pyarrow", "ArrowException"):
        return f"cannot read the Arrow / Parquet data: {_first_line(exc)}"
    if type(exc).__name__ == "OutOfMemoryError":
        return "out of GPU memory; use a smaller --batch-size or max length, or a smaller model"
    if name and (isinstance(exc, (ValueError, TypeError)) or _is_kind(exc, "jinja2", "TemplateError")
                 or _is_kind(exc, "yaml", "YAMLError") or _is_kind(exc, "safetensors", "SafetensorError")):
        return f"{name}: {_first_line(exc)}"
    return None


def report(exc: BaseException, verbose: bool) -> int:
    """Print ``exc`` as one line (after its traceback when ``verbose``); return the exit code."""
    if verbose:
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    message = fault_message(exc)
    if message is not None:
        print(f"error: {message}", file=sys.stderr)
        return 2
    hint = "" if verbose else " (run with --verbose for the traceback)"
    print(f"error: internal error: {type(exc).__name__}: {_first_line(exc)}{hint}", file=sys.stderr)
    return 1


def _os_message(exc: OSError) -> str:
    paths = [_TEMP.sub(r"\1", str(p)) for p in (exc.filename, exc.filename2) if p is not None]
    reason = exc.strerror or _first_line(exc) or type(exc).__name__
    hint = _HINTS.get(exc.errno)
    return f"{' -> '.join(paths) + ': ' if paths else ''}{reason}{'; ' + hint if hint else ''}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _is_kind(exc: BaseException, package: str, class_name: str) -> bool:
    """True when one of ``exc``'s classes is ``package``'s ``class_name`` (checked by name, so the
    package is never imported here)."""
    return any(c.__name__ == class_name and c.__module__.split(".")[0] == package
               for c in type(exc).__mro__)


def _library_of(exc: BaseException) -> str | None:
    """The third-party library that raised ``exc`` (its innermost frame), or None for medtune code."""
    tb = traceback.extract_tb(exc.__traceback__)
    if not tb:
        return None
    path = tb[-1].filename.replace("\\", "/")
    if "/medtune/" in path and "site-packages" not in path:
        return None
    for lib in _LIBRARIES:
        if f"/{lib}/" in path:
            return lib
    return None
