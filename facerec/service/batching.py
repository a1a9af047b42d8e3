"""Dynamic batching: the faces of requests that arrive together go through the backbone in one call.

Each request puts its faces (one tensor) in a queue and waits for their embeddings. One worker thread
takes the first job waiting, then keeps taking jobs until the batch holds `max_faces` faces or
`max_wait` seconds have passed since it took the first, and runs the whole batch in one call. One call
on 16 faces costs much less than 16 calls on one (the weights are read from memory once per call, and a
GPU is busy only when given enough work), and while a call runs, the next requests gather in the queue.
The wait is bounded: a lone request pays at most `max_wait`. `max_faces=1` turns batching off: every
request's faces go through in a call of their own.

One thread runs every call, so calls never compete with each other for the cores (torch already spreads
one call over all of them). The queue is unbounded here; the server bounds what reaches it (see
facerec.service.limits.Admission).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

_STOP = None  # put in the queue by `stop`


@dataclass
class _Job:
    faces: torch.Tensor
    future: Future = field(default_factory=Future)


class Batcher:
    """Runs `call` (faces (N, ...) -> results (N, ...)) on batches of the jobs submitted meanwhile."""

    def __init__(
        self, call: Callable[[torch.Tensor], torch.Tensor], max_faces: int = 32, max_wait: float = 0.005
    ) -> None:
        if max_faces < 1 or max_wait < 0:
            raise ValueError("max_faces must be at least 1 and max_wait at least 0")
        self.call = call
        self.max_faces = max_faces
        self.max_wait = max_wait
        self.calls = 0  # batches run
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._held: _Job | None = None  # taken from the queue but too big for the batch being made
        self._thread = threading.Thread(target=self._work, name="facerec-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish the batches already queued, then end the worker."""
        self._queue.put(_STOP)
        self._thread.join()

    def submit(self, faces: torch.Tensor) -> Future:
        """A future of `call`'s results for `faces` (one or more), in their order."""
        job = _Job(faces)
        self._queue.put(job)
        return job.future

    async def run(self, faces: torch.Tensor) -> torch.Tensor:
        """`submit`, awaited without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(faces))

    def _work(self) -> None:
        while True:
            batch = self._gather()
            if batch is None:
                return
            self._run(batch)

    def _gather(self) -> list[_Job] | None:
        """The next batch: the first job, then those that come within `max_wait` while they fit."""
        first = self._held if self._held is not None else self._queue.get()
        self._held = None
        if first is _STOP:
            return None
        batch, count = [first], len(first.faces)
        deadline = time.monotonic() + self.max_wait
        while count < self.max_faces:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP or count + len(job.faces) > self.max_faces:
                self._held = job
                break
            batch.append(job)
            count += len(job.faces)
        return batch

    def _run(self, batch: list[_Job]) -> None:
        try:
            results = self.call(torch.cat([job.faces for job in batch]))
        except Exception as error:  # every waiting request gets the failure; the worker goes on
            for job in batch:
                job.future.set_exception(error)
            return
        finally:
            self.calls += 1
        start = 0
        for job in batch:
            job.future.set_result(results[start : start + len(job.faces)])
            start += len(job.faces)
