"""The bounded job queue: a fixed pool of worker threads, a waiting line of fixed length.

Every piece of model work (compress, denoise, ...) is a job, whether its request waits for
the answer or asks for a job id (``?async=1``). So at most ``workers`` jobs compute at once and
at most ``capacity`` wait; one more is refused at once (``QueueFull``: 429) instead of
queueing without end, and memory stays bounded by the limits on each job::

    submit --(pending < workers + capacity)--> queued --worker--> running --> done
                                                  |                  |    \\-> failed
                                                  \\--cancel-->  cancelled <-/ (cooperative)

Cancellation is cooperative: a job's work reports progress through ``Job.report`` (wired to
the progress callbacks the library already has), which raises ``Cancelled`` once the job was
cancelled or has run past its time limit. A queued job is cancelled before it starts.
Finished jobs keep their results for ``RESULT_SECONDS`` and ``RESULT_BYTES`` in all, oldest
dropped first.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from clearvae.service.errors import ServiceError

log = logging.getLogger("clearvae.service")

State = Literal["queued", "running", "done", "failed", "cancelled"]
RESULT_SECONDS = 600.0  # how long a finished job's result stays to be fetched
RESULT_BYTES = 256 * 2**20  # results kept for all finished jobs together
FIRST_GUESS = 5.0  # seconds a job takes, before any has finished (for Retry-After)


class Cancelled(Exception):
    """Raised inside a job's work by ``Job.report`` to stop it."""


class QueueFull(ServiceError):
    def __init__(self, retry_after: int, waiting: int) -> None:
        super().__init__(429, f"the server is busy ({waiting} jobs waiting, the most it "
                         f"queues): retry in about {retry_after} s",
                         {"retry_after": retry_after, "waiting": waiting},
                         {"Retry-After": str(retry_after)})


@dataclass(frozen=True)
class Outcome:
    """What a job gives back: numbers and base64 files as JSON, or one PNG image."""

    data: dict[str, Any]
    png: bytes | None = None

    @property
    def nbytes(self) -> int:
        return len(self.png or b"") + _size(self.data)


@dataclass
class Job:
    """One piece of work and where it stands; read by the API, updated by its worker."""

    id: str
    kind: str  # the endpoint: compress, denoise, ...
    time_limit: float  # seconds it may run
    state: State = "queued"
    fraction: float = 0.0  # progress, 0..1
    message: str = "queued"
    outcome: Outcome | None = None
    error: ServiceError | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    future: Future | None = field(default=None, repr=False)
    cleanup: Callable[[], None] | None = field(default=None, repr=False)  # once, when over
    _clock: float = field(default=0.0, repr=False)  # monotonic start, for the time limit
    _waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = field(
        default_factory=list, repr=False)

    @property
    def done(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def report(self, fraction: float, message: str) -> None:
        """Progress from inside the work; raises ``Cancelled`` when the job should stop."""
        if self.cancel_requested.is_set():
            raise Cancelled("cancelled")
        if self.started is not None and time.monotonic() - self._clock > self.time_limit:
            raise Cancelled("timeout")
        self.fraction, self.message = min(max(float(fraction), 0.0), 1.0), message

    def status(self) -> dict[str, Any]:
        """The job as the API shows it (without its result)."""
        out: dict[str, Any] = {"job": self.id, "kind": self.kind, "state": self.state,
                               "progress": round(self.fraction, 4), "message": self.message,
                               "created": self.created, "started": self.started,
                               "finished": self.finished}
        if self.error is not None:
            out["error"] = self.error.body()
        return out


Work = Callable[[Job], Outcome]


class JobQueue:
    """``workers`` threads running jobs; at most ``capacity`` more waiting."""

    def __init__(self, workers: int, capacity: int) -> None:
        self.workers, self.capacity = workers, capacity
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="clearvae-job")
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._pending = 0  # queued + running
        self._running = 0
        self._seconds = FIRST_GUESS  # running mean of how long jobs take

    # --- the API's side ---------------------------------------------------------------------

    def submit(self, kind: str, work: Work, time_limit: float,
               cleanup: Callable[[], None] | None = None) -> Job:
        """Queue ``work``; ``cleanup`` runs once it is over, however it ends. Raises
        ``QueueFull`` (and runs ``cleanup``) when the line is full."""
        with self._lock:
            self._forget_old()
            full = self._pending >= self.workers + self.capacity
            if not full:
                job = Job(secrets.token_urlsafe(12), kind, time_limit, cleanup=cleanup)
                self._jobs[job.id] = job
                self._pending += 1
            waiting = self._pending - self._running
            retry = max(1, round(self._seconds * (waiting + 1) / self.workers))
        if full:
            if cleanup is not None:
                cleanup()
            raise QueueFull(retry, waiting)
        job.future = self._pool.submit(self._run, job, work)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            self._forget_old()
            return self._jobs.get(job_id)

    def cancel(self, job: Job) -> None:
        """Stop a job: at once when queued, at its next progress report when running."""
        job.cancel_requested.set()
        if job.state == "queued" and job.future is not None and job.future.cancel():
            # never started: _run will not run, so finish it here
            self._finish(job, "cancelled", "cancelled before it started")
        elif job.state == "running":
            job.message = "cancelling"

    def forget(self, job: Job) -> None:
        """Drop a finished job and its result (after a request that waited has answered)."""
        with self._lock:
            if job.done:
                self._jobs.pop(job.id, None)

    async def wait(self, job: Job, timeout: float) -> bool:
        """Wait (in the event loop, without a thread) until ``job`` is over; False after
        ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        with self._lock:
            if job.done:
                return True
            job._waiters.append((loop, waiter))
        try:
            await asyncio.wait_for(waiter, timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            with self._lock:
                if (loop, waiter) in job._waiters:
                    job._waiters.remove((loop, waiter))

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"workers": self.workers, "running": self._running,
                    "queued": self._pending - self._running, "capacity": self.capacity}

    def close(self) -> None:
        """Cancel what waits and what runs, then wait for the workers to stop."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if not j.done]
        for job in jobs:
            self.cancel(job)
        self._pool.shutdown(wait=True, cancel_futures=True)

    # --- the workers' side ------------------------------------------------------------------

    def _run(self, job: Job, work: Work) -> None:
        with self._lock:
            self._running += 1
            job.state, job.started, job._clock = "running", time.time(), time.monotonic()
            job.message = "started"
        try:
            job.report(0.0, "started")  # cancelled while it waited: stop before any work
            outcome = work(job)
        except Cancelled as exc:
            if str(exc) == "timeout":
                job.error = ServiceError(504, f"the job ran longer than this server's limit of "
                                         f"{job.time_limit:g} s and was stopped: ask for less "
                                         "(a smaller image, a lower effort), or ask the "
                                         "operator for a longer --timeout", {"job": job.id})
                self._finish(job, "failed", "timed out")
            else:
                self._finish(job, "cancelled", "cancelled")
        except ServiceError as exc:
            job.error = exc
            self._finish(job, "failed", "failed")
        except Exception:  # a bug or an exhausted machine: logged here, never sent
            log.exception("job %s (%s) failed unexpectedly", job.id, job.kind)
            job.error = ServiceError(500, "internal error: the job failed unexpectedly; the "
                                     "server logged the details")
            self._finish(job, "failed", "failed")
        else:
            job.outcome = outcome
            self._finish(job, "done", "done", 1.0)

    def _finish(self, job: Job, state: State, message: str, fraction: float | None = None,
                ) -> None:
        """Mark a job over (once), clean up after it and wake who waits for it."""
        if job.cleanup is not None:
            job.cleanup()
        with self._lock:
            job.state, job.message, job.finished = state, message, time.time()
            if fraction is not None:
                job.fraction = fraction
            self._pending -= 1
            if job.started is not None:
                self._running -= 1
                self._seconds = 0.8 * self._seconds + 0.2 * (job.finished - job.started)
            waiters, job._waiters = job._waiters, []
        for loop, waiter in waiters:
            try:
                loop.call_soon_threadsafe(_set, waiter)
            except RuntimeError:  # that request's event loop has ended
                pass

    def _forget_old(self) -> None:
        """Drop finished jobs older than RESULT_SECONDS, then the oldest past RESULT_BYTES
        (under the lock)."""
        now = time.time()
        finished = [j for j in self._jobs.values() if j.done]
        for job in finished:
            if now - (job.finished or now) > RESULT_SECONDS:
                del self._jobs[job.id]
        total = sum(j.outcome.nbytes for j in self._jobs.values() if j.outcome is not None)
        for job in [j for j in self._jobs.values() if j.done]:  # oldest first
            if total <= RESULT_BYTES:
                break
            if job.outcome is not None:
                total -= job.outcome.nbytes
            del self._jobs[job.id]


def _set(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _size(value: Any) -> int:
    """Bytes of the strings and bytes inside a JSON-like value."""
    if isinstance(value, (str, bytes)):
        return len(value)
    if isinstance(value, dict):
        return sum(_size(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_size(v) for v in value)
    return 8
