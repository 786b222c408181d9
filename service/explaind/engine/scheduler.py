"""The row-budget scheduler of one (model, variant, device).

Batches are formed by rows, not requests: up to `max_batch_rows`, waiting at most `max_delay_s` for
more. Jobs within a fair share of the batch go in whole and short jobs (at most SHORT_BATCHES batches
of rows) come next, so a 10,000-row job cannot starve a 20- or a 200-row one; the rest of a batch goes
to long jobs of the priority class owed the most device time (device.ClassShare), earliest deadline
first, so admitted work finishes in deadline order instead of all of it advancing together past its
deadlines; long jobs without a deadline come after, taking turns (see `_form_batch`). Per-job
constants are stacked (one slot per job in the batch) and each row carries its slot index, so rows of
different requests share a batch. At most two batches are in flight: one running on the device while
the next is formed. Results are handed back in batch order. The scheduler measures its variant's
model seconds per row (`seconds_per_row`), which admission uses to cost what it admits.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import numpy as np

from ..errors import DeadlineExceeded, ExplaindError
from ..onnxgraph.variants import VariantInterface
from .device import BatchPriority, ClassShare
from .job import Job, RowChunk, chunk_rows
from .runner import Device, Runner

log = logging.getLogger(__name__)

IN_FLIGHT = 2
# Weight of one full batch in the moving average of seconds per row (a batch of k rows: k / max_batch_rows
# of it, so a variant's few one-row batches barely move the figure its full batches set): about the
# last 20 batches, so one batch slowed by another process does not swing what admission admits.
EMA_WEIGHT = 0.05
EMA_CLAMP = 4.0  # a batch counts for at most 4x (or 1/4) the average: one preempted batch moves it little
# A job of at most this many batches of rows is short: it runs before long jobs, smallest first (its
# latency is a few batches; admission counts short work as ahead of every long job).
SHORT_BATCHES = 4


@dataclass
class Batch:
    jobs: list[Job]
    codes: list[RowChunk]  # one per job, contiguous in the batch
    feed: dict[str, np.ndarray]
    rows: int
    formed_at: float
    lead: Job  # the job the batch was formed for (the first long job served, else the first job)


class QueueAccount:
    """Rows and jobs queued across all schedulers, against the configured bounds; `reserved`: rows that
    admitted requests planned and have not yet submitted as jobs (engine.admission)."""

    def __init__(self, max_rows: int, max_jobs: int) -> None:
        self.max_rows = max_rows
        self.max_jobs = max_jobs
        self.rows = 0
        self.jobs = 0
        self.reserved = 0


class Scheduler:
    def __init__(self, *, model: str, variant: str, interface: VariantInterface,
                 runner_factory: Callable[[], Awaitable[Runner]], device: Device,
                 max_batch_rows: int, max_delay_s: float, account: QueueAccount,
                 on_batch: Callable[[str, str, int, int, float], None] | None = None,
                 on_queue: Callable[[str, str, int, int], None] | None = None,
                 share: ClassShare | None = None,
                 on_rows: Callable[[Job, int], None] | None = None,
                 on_measured: Callable[[bool], None] | None = None) -> None:
        self.model = model
        self.variant = variant
        self.interface = interface
        self.device = device
        self.max_batch_rows = max_batch_rows
        self.measured_batch_rows: dict[int, float] = {}  # rows/s per candidate batch (engine.batch_tuning_s)
        self.max_delay_s = max_delay_s
        self._account = account
        self._runner_factory = runner_factory
        self._runner: Runner | None = None
        self._runner_lock = asyncio.Lock()
        self._jobs: collections.deque[Job] = collections.deque()
        self._wakeup = asyncio.Event()
        self._in_flight = asyncio.Semaphore(IN_FLIGHT)
        self._previous_delivery: asyncio.Future[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._stack_cache: tuple[tuple[int, ...], dict[str, np.ndarray]] | None = None
        self._on_batch = on_batch
        self._on_queue = on_queue
        self._share = share
        self._on_rows = on_rows          # (job, rows) evaluated for it
        self._on_measured = on_measured  # (first measurement?) after each batch
        # Model seconds per row of this variant, a moving average over its batches; None until one ran.
        self.seconds_per_row: float | None = None
        self.measured_at = -math.inf  # time.monotonic() of the last batch measured
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"scheduler {model}/{variant}")

    # Jobs ---------------------------------------------------------------------------------------

    def add(self, job: Job) -> None:
        job.submitted_at = time.monotonic()
        self._jobs.append(job)
        self._report_queue()
        self._wakeup.set()

    def drop(self, job: Job) -> None:
        """Forget a job's pending rows (cancelled or expired); rows in flight are discarded."""
        if job in self._jobs:
            self._jobs.remove(job)
            self._account.rows -= job.untaken
            self._account.jobs -= 1
            self._report_queue()

    def queued_rows(self) -> int:
        return sum(job.remaining for job in self._jobs)

    def queued_jobs(self) -> int:
        return len(self._jobs)

    @property
    def short_rows(self) -> int:
        """Jobs of at most this many rows are short (SHORT_BATCHES)."""
        return SHORT_BATCHES * self.max_batch_rows

    @property
    def idle(self) -> bool:
        """No job queued and no batch running: the session may be closed."""
        return not self._jobs and not self._running

    @property
    def runner_bytes(self) -> int:
        """The session's size as the cache counts it (0 before it is built)."""
        return self._runner.size_bytes if self._runner is not None else 0

    def _report_queue(self) -> None:
        if self._on_queue:
            self._on_queue(self.model, self.variant, self.queued_rows(), len(self._jobs))

    # Loop ---------------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            self._expire()
            if not self._jobs:
                continue
            await self._wait_for_rows()
            await self._in_flight.acquire()
            self._expire()
            batch = self._form_batch()
            if batch is None:
                self._in_flight.release()
                continue
            previous, self._previous_delivery = self._previous_delivery, asyncio.get_running_loop().create_future()
            task = asyncio.get_running_loop().create_task(self._execute(batch, previous, self._previous_delivery))
            self._running.add(task)  # keep a reference until it is done
            task.add_done_callback(self._running.discard)
            if self._jobs:
                self._wakeup.set()

    async def _wait_for_rows(self) -> None:
        """Wait up to max_delay for a full batch when fewer rows than that are queued (not for a batch
        of eager jobs only: steps of iterative methods, whose next rows wait for these results)."""
        if all(job.eager for job in self._jobs):
            return
        end = time.monotonic() + self.max_delay_s
        while self.queued_rows() < self.max_batch_rows:
            timeout = end - time.monotonic()
            if timeout <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except asyncio.TimeoutError:
                return

    def _expire(self) -> None:
        now = time.monotonic()
        for job in [j for j in self._jobs if j.finished or j.expired(now)]:
            if not job.finished:
                job.fail(DeadlineExceeded(f"the request's deadline passed with {job.remaining} of "
                                          f"{job.total_rows} model evaluations still queued"))
            self.drop(job)

    def _form_batch(self) -> Batch | None:
        """Small jobs whole, short jobs next; then long jobs: the class owed most, earliest deadline first.

        A job with no more rows than a fair share of the batch (max_batch_rows / active jobs) goes in
        whole, so a small request never waits behind long ones; short jobs (short_rows) follow,
        fewest rows left first. The rest of the batch goes to the long jobs of the class the device
        share picks, earliest deadline first (the first taking all it can: under admission control,
        admitted work then finishes by its deadline), then to jobs without a deadline in rotation
        order (the rotation moves by one job per batch, so they are served in turn: equal rows over a
        round), then to the other classes the same way. A batch mostly holds one job's rows, which
        the prefixes then use without a per-row copy of that job's constants (GraphBuilder.job_rows).
        """
        capacity = self.max_batch_rows
        taken: dict[Job, RowChunk] = {}
        active = [job for job in self._jobs if job.remaining > 0]
        share = max(1, capacity // max(1, len(active)))
        small = [job for job in active if job.remaining <= share]
        short = sorted((job for job in active if job.remaining > share and job.total_rows <= self.short_rows),
                       key=lambda j: j.remaining)
        long = [job for job in active if job.remaining > share and job.total_rows > self.short_rows]
        if long:
            turn = {job: i for i, job in enumerate(self._jobs)}
            chosen = self._share.pick({job.priority for job in long}) if self._share else ""
            long.sort(key=lambda j: (j.priority != chosen, j.deadline is None, j.deadline or 0.0, turn[j]))
        lead = long[0] if long else None
        for job in small + short + long:
            if capacity == 0:
                break
            chunk = job.take(min(job.remaining, capacity))
            n = chunk_rows(chunk)
            capacity -= n
            self._account.rows -= n
            taken[job] = chunk
        for job in [j for j in self._jobs if j.remaining == 0]:
            self._jobs.remove(job)
            self._account.jobs -= 1
        self._jobs.rotate(-1)
        self._report_queue()
        if not taken:
            return None
        jobs, codes = list(taken), list(taken.values())
        counts = [chunk_rows(c) for c in codes]
        now = time.monotonic()
        for job in jobs:
            if not job.started:
                job.started = True
                job.stats.queue_seconds = now - job.submitted_at
        feed = self._stacked_constants(jobs)
        feed["job_index"] = np.repeat(np.arange(len(jobs), dtype=np.int64), counts)
        for name in self.interface.codes:
            feed[name] = np.concatenate([c[name] for c in codes])
        return Batch(jobs, codes, feed, sum(counts), now, lead if lead in taken else jobs[0])

    def _priority(self, batch: Batch) -> BatchPriority:
        """The batch's place in the device queue: short requests first, then class share and deadline."""
        size = min(job.total_rows for job in batch.jobs)
        lead = batch.lead
        return BatchPriority(size, short=size <= self.short_rows, klass=lead.priority,
                             deadline=lead.deadline if lead.deadline is not None else math.inf)

    def _stacked_constants(self, jobs: list[Job]) -> dict[str, np.ndarray]:
        """Per-job constants stacked one slot per job; reused while the same jobs share batches."""
        ids = tuple(job.id for job in jobs)
        if self._stack_cache is None or self._stack_cache[0] != ids:
            stacked = {name: np.stack([job.constants[name] for job in jobs]) for name in self.interface.constants}
            self._stack_cache = (ids, stacked)
        return dict(self._stack_cache[1])

    async def _runner_ready(self) -> Runner:
        async with self._runner_lock:
            if self._runner is None:
                self._runner = await self._runner_factory()
            return self._runner

    async def _execute(self, batch: Batch, previous: asyncio.Future[None] | None,
                       delivered: asyncio.Future[None]) -> None:
        try:
            runner = await self._runner_ready()
            slot_ids = tuple(job.id for job in batch.jobs)
            priority = self._priority(batch)
            # Timed on the device thread: the run itself, not the wait behind other batches.
            outputs, seconds = await asyncio.wrap_future(
                self.device.queue.submit(priority, runner.timed_run, batch.feed, slot_ids))
            if previous is not None:
                await previous
            self._deliver(batch, dict(zip(runner.outputs, outputs)), seconds)
        except Exception as exc:
            log.exception("batch of %s/%s failed", self.model, self.variant) if not isinstance(exc, ExplaindError) else None
            for job in batch.jobs:
                job.fail(exc)
        finally:
            delivered.set_result(None)
            self._in_flight.release()

    def _deliver(self, batch: Batch, outputs: dict[str, np.ndarray], seconds: float) -> None:
        if self._on_batch:
            self._on_batch(self.model, self.variant, batch.rows, len(batch.jobs), seconds)
        first = self.seconds_per_row is None
        self._measure(seconds, batch.rows)
        start = 0
        for slot, (job, codes) in enumerate(zip(batch.jobs, batch.codes)):
            n = chunk_rows(codes)
            job.stats.batches += 1
            job.stats.rows += n
            job.stats.compute_seconds += seconds * n / batch.rows
            if self._share:  # device time (the smoothed figure: one batch preempted charges no class a lot)
                self._share.charge(job.priority, n * (self.seconds_per_row or 0.0))
            row_outputs = {name: outputs[name][start : start + n] for name in self.interface.row_outputs}
            slot_outputs = {name: outputs[name][slot] for name in self.interface.slot_outputs}
            job.deliver(codes, row_outputs, slot_outputs)
            if self._on_rows:
                self._on_rows(job, n)
            start += n
        if self._on_measured:
            self._on_measured(first)

    def _measure(self, seconds: float, rows: int) -> None:
        """Fold one batch into the moving average of seconds per row (the first sets it; a batch counts
        for at most EMA_CLAMP times the average either way, so one preempted batch moves it little)."""
        per_row = seconds / max(rows, 1)
        self.measured_at = time.monotonic()
        if self.seconds_per_row is None:
            self.seconds_per_row = per_row
        else:
            per_row = min(max(per_row, self.seconds_per_row / EMA_CLAMP), self.seconds_per_row * EMA_CLAMP)
            weight = EMA_WEIGHT * min(1.0, rows / self.max_batch_rows)
            self.seconds_per_row += weight * (per_row - self.seconds_per_row)

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        for job in list(self._jobs):
            job.fail(ExplaindError("the engine stopped"))
            self.drop(job)
        self._runner = None  # the session goes with its last reference
