"""Request batching for the API server: one worker thread, compatible requests generated together.

Example::

    scheduler = BatchScheduler(engine, max_batch=16, max_queue=256)
    job = Job(prompt_ids, GenerationSettings(max_new_tokens=64), model=None)
    scheduler.submit(job)          # False: queue full (the server answers 429)
    completions = job.wait()

Requests asking for the same model and the same sampling parameters share one ``generate`` call
(up to ``max_batch`` sequences); a request with a ``seed`` runs on its own so that its result does
not depend on what else was in flight. Each job gets its own rows back, in order: outputs are never
mixed between requests. ``on_text`` callbacks fire on the worker thread.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

_SEQ = itertools.count()


@dataclass
class Job:
    prompt_ids: list
    params: object  # inference.settings.GenerationSettings
    model: str | None = None
    on_text: Callable | None = None  # (sample index, delta, finish_reason)
    on_done: Callable | None = None  # called once result or error is set
    cancel: threading.Event = field(default_factory=threading.Event)
    result: list | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    seq: int = field(default_factory=lambda: next(_SEQ))

    def key(self):
        """Jobs with equal keys can share a batch (a seeded job is alone)."""
        return (self.model, self.params, self.seq if self.params.seed is not None else None)

    def finish(self, result=None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()
        if self.on_done:
            self.on_done()

    def wait(self, timeout: float | None = None) -> list:
        self.done.wait(timeout)
        if self.error is not None:
            raise self.error
        return self.result


class BatchScheduler:
    """Runs jobs on one worker thread, batching compatible ones (first come, first served)."""

    def __init__(self, engine, max_batch: int = 16, max_queue: int = 256):
        self.engine, self.max_batch = engine, max_batch
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._held: list[Job] = []  # taken from the queue but not batchable with the last batch
        self.batches: list[int] = []  # sizes of the batches run (for tests and stats)
        self._thread = threading.Thread(target=self._loop, name="medtune-generate", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> bool:
        """Queue ``job``; return False when the queue is full."""
        try:
            self._queue.put_nowait(job)
            return True
        except queue.Full:
            return False

    def pending(self) -> int:
        return self._queue.qsize() + len(self._held)

    def _next_batch(self) -> list[Job]:
        first = self._held.pop(0) if self._held else self._queue.get()
        batch, rows = [first], first.params.n
        for job in self._drain():
            if job.key() == first.key() and rows + job.params.n <= self.max_batch:
                batch.append(job)
                rows += job.params.n
            else:
                self._held.append(job)
        return batch

    def _drain(self):
        """Yield the jobs held back earlier, then whatever is waiting in the queue now."""
        held, self._held = self._held, []
        yield from held
        while True:
            try:
                yield self._queue.get_nowait()
            except queue.Empty:
                return

    def _loop(self) -> None:
        while True:
            batch = []
            for job in self._next_batch():
                if job.cancel.is_set():  # its client left while it waited
                    job.finish(error=CancelledRequest())
                else:
                    batch.append(job)
            if batch:
                self._run(batch)

    def _run(self, batch: list[Job]) -> None:
        n = batch[0].params.n
        owners = [(job, i) for job in batch for i in range(n)]

        def on_text(row, delta, finish):
            job, sample = owners[row]
            if job.on_text:
                job.on_text(sample, delta, finish)

        self.batches.append(len(batch))
        try:
            got = self.engine.generate([j.prompt_ids for j in batch], batch[0].params, batch[0].model,
                                       on_text=on_text, cancel=[j.cancel for j in batch])
        except Exception as exc:  # noqa: BLE001 - reported to every waiting request, the worker lives on
            for job in batch:
                job.finish(error=exc)
            return
        for k, job in enumerate(batch):
            job.finish(result=got[k * n:(k + 1) * n])


class CancelledRequest(Exception):
    """The client went away before its request was generated."""
