"""Work spread over processes: how many, and an order-keeping map over them (``data convert``,
``data clean``; tokenization forks through ``datasets.map``, :mod:`medtune.data.tokenize.shards`).
Example::

    for result in parallel_map(count_lines, pieces, default_workers(0)):
        ...
"""

from __future__ import annotations

import os
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
                 initargs: tuple = ()) -> Iterator:
    """``map(fn, items)`` in input order, over ``workers`` spawned processes when more than one.

    ``initializer(*initargs)`` runs once in each process (or here, when running in-process): the
    place for state every item needs (an n-gram index) without pickling it per item.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        if initializer:
            initializer(*initargs)
        yield from map(fn, items)
        return
    import multiprocessing

    # spawn: fork is unsafe once threads exist
    with multiprocessing.get_context("spawn").Pool(min(workers, len(items)), initializer, initargs) as pool:
        yield from pool.imap(fn, items)
