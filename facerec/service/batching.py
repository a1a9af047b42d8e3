"""Dynamic batching: the work of requests that arrive together goes through a model in one call.

Each request puts its work (a job: one image to detect, one tensor of faces to embed) in a queue and
waits for its result. A worker thread takes the first job waiting, then keeps taking jobs until the
batch is full (`max_jobs` jobs, or jobs whose `size` adds up to `limit`) or `max_wait` seconds have
passed since it took the first, and runs the whole batch in one call. One call on 16 faces costs much
less than 16 calls on one (the weights are read from memory once per call, and a GPU is busy only
when given enough work), and while a call runs, the next requests gather in the queue. The wait is
bounded: a lone request pays at most `max_wait`. A limit of 1 turns batching off: every job goes
through in a call of its own. With several workers (`threads`), one makes a batch while the others
run theirs; each worker runs torch on `torch_threads` threads of its own (torch_threads, below).

The server runs two: the backbone's, of faces (`size`: their number, `limit`: --max-batch), and the
detector's, of images (facerec.service.models: `size`: the pixels the detector works on, `limit`:
its working size, so a batch holds one large photo or many small ones; `max_jobs`:
--max-detect-batch). The backbone's has one worker: its calls are torch through and through, and torch
already spreads one call over all the cores. The detector's has two, because a detector's call is
partly Python and numpy on one core (MTCNN's suppression and box arithmetic between its networks):
with one worker the other core idled through those parts (AMD EPYC, 2 cores, 16 clients: 12.9
requests/s with one, 17.6 with two). Each of the two runs torch on half the cores: when both ran it on
all of them, their threads outnumbered the cores, and the CPU time a request cost rose (Intel Xeon with
AMX, 2 cores, 16 clients with 640 px photos, benchmarks/bench_serve.py: 92 ms of server CPU a request
and 18.15 requests/s while every thread ran torch on both cores, 85 ms and 19.57 with each given its
share). The queue is unbounded here; the server bounds what reaches it
(see facerec.service.limits.Admission).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")
_STOP = None  # put in the queue by `stop`


@dataclass
class _Job(Generic[T]):
    work: T
    size: int
    future: Future = field(default_factory=Future)


class Batcher(Generic[T, R]):
    """Runs `call` (the jobs' work, in order -> one result each) on batches of the jobs submitted
    meanwhile: at most `max_jobs` jobs (None: no bound) whose sizes add up to at most `limit` (a job
    larger than that runs alone), on `threads` worker threads, each running torch on `torch_threads`
    threads (None: what torch gives a new thread)."""

    def __init__(
        self,
        call: Callable[[list[T]], Sequence[R]],
        limit: int,
        max_wait: float = 0.005,
        size: Callable[[T], int] = len,
        max_jobs: int | None = None,
        name: str = "facerec-batcher",
        threads: int = 1,
        torch_threads: int | None = None,
    ) -> None:
        if limit < 1 or max_wait < 0 or (max_jobs is not None and max_jobs < 1):
            raise ValueError("limit and max_jobs must be at least 1 and max_wait at least 0")
        self.call = call
        self.limit = limit
        self.max_wait = max_wait
        self.size = size
        self.max_jobs = max_jobs
        self.torch_threads = torch_threads
        self.calls = 0  # batches run
        self._counting = threading.Lock()
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._held: _Job | None = None  # taken from the queue but too big for the batch being made
        self._gathering = threading.Lock()  # one thread makes a batch at a time; others may run theirs
        self._threads = [threading.Thread(target=self._work, name=name, daemon=True) for _ in range(threads)]

    @classmethod
    def of_tensors(
        cls,
        call: Callable[[torch.Tensor], torch.Tensor],
        max_rows: int,
        max_wait: float = 0.005,
        torch_threads: int | None = None,
    ) -> Batcher[torch.Tensor, torch.Tensor]:
        """A batcher of tensors (N, ...) for `call` (N, ...) -> (N, ...), such as a backbone's embed:
        the jobs' rows go through in one call on their concatenation, at most `max_rows` rows."""

        def together(parts: list[torch.Tensor]) -> list[torch.Tensor]:
            return list(call(torch.cat(parts)).split([len(part) for part in parts]))

        return cls(together, max_rows, max_wait, torch_threads=torch_threads)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Finish the batches already queued, then end the workers."""
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join()

    def submit(self, work: T) -> Future:
        """A future of `call`'s result for `work`."""
        job = _Job(work, self.size(work))
        self._queue.put(job)
        return job.future

    async def run(self, work: T) -> R:
        """`submit`, awaited without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(work))

    def _work(self) -> None:
        if self.torch_threads is not None:
            torch_threads(self.torch_threads)
        while True:
            with self._gathering:
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
        batch, total = [first], first.size
        deadline = time.monotonic() + self.max_wait
        while total < self.limit and (self.max_jobs is None or len(batch) < self.max_jobs):
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP or total + job.size > self.limit:
                self._held = job
                break
            batch.append(job)
            total += job.size
        return batch

    def _run(self, batch: list[_Job]) -> None:
        try:
            results = self.call([job.work for job in batch])
        except Exception as error:  # every waiting request gets the failure; the worker goes on
            for job in batch:
                job.future.set_exception(error)
            return
        finally:
            with self._counting:
                self.calls += 1
        for job, result in zip(batch, results, strict=True):
            job.future.set_result(result)


def torch_threads(count: int) -> None:
    """Run torch's operations on this thread with `count` threads. Torch keeps the count per thread
    (OpenMP's), and a thread that first runs torch begins with the count last set on any thread (torch
    2.14), so every thread of the server that runs torch sets its own rather than inherit an accident
    of order."""
    torch.set_num_threads(count)
