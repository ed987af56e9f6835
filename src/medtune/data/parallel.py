"""Work spread over processes: how many, and an order-keeping map over them."""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable, Iterable, Iterator

from medtune.errors import MedtuneError


def default_workers(workers: int = 0) -> int:
    """``workers`` or, for 0, the number of usable cores (at most 8)."""
    if workers < 0:
        raise MedtuneError(f"--workers must be >= 0 (0 = one per core), got {workers}")
    if workers > 0:
        return workers
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1))


def parallel_map(fn: Callable, items: Iterable, workers: int, initializer: Callable | None = None,
                 initargs: tuple = (), fork: bool = False) -> Iterator:
    """``map(fn, items)`` in input order, over ``workers`` processes when more than one.

    ``initializer(*initargs)`` runs once in each process (or here, when running in-process): the
    place for state every item needs (a tokenizer, an n-gram index) without pickling it per item.
    ``fork``: on Linux, fork the workers (as ``datasets.map(num_proc=...)`` does) so they share this
    process's imported modules and tokenizer pages instead of each importing its own (~250 MiB each).
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        if initializer:
            initializer(*initargs)
        yield from map(fn, items)
        return
    import multiprocessing

    fork = fork and sys.platform == "linux"
    # spawn by default: fork is unsafe once threads exist, unless (as for tokenization) the workers
    # only run code that starts none: tokenizers' own thread pool is turned off before forking
    ctx = multiprocessing.get_context("fork" if fork else "spawn")
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    if fork:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        gc.freeze()  # the children's collector then leaves inherited objects' pages shared
    try:
        with ctx.Pool(min(workers, len(items)), initializer, initargs) as pool:
            yield from pool.imap(fn, items)
    finally:
        if fork:
            gc.unfreeze()
        if fork and saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        elif fork:
            os.environ["TOKENIZERS_PARALLELISM"] = saved
