"""Run a function from many threads at once and fail with what any of them raised."""

from __future__ import annotations

import threading


def run_threads(work, n: int) -> None:
    """Call ``work(0)`` … ``work(n - 1)`` in ``n`` threads started together; after all end, fail
    with the first errors raised in any of them (an exception in a thread never fails a test alone)."""
    errors = []

    def guarded(t):
        try:
            work(t)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    workers = [threading.Thread(target=guarded, args=(t,)) for t in range(n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors[:3]
