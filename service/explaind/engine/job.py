"""A job: one request's rows for one graph variant.

Rows are produced lazily, chunk by chunk, by the method's sampler (so a 50,000-mask request never
materialises its codes at once), and consumed chunk by chunk by the method's reducer. The sampler
draws from the job's own seeded generator in a fixed order, so the rows are the same whatever the
batching.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

# Row codes by name, each [k, ...]; every chunk holds at least one array (the engine feeds only
# the names the variant declares, so a method may add bookkeeping arrays such as row numbers).
RowChunk = dict[str, np.ndarray]
# consume(codes of the job's rows in a batch, per-row outputs for them, per-slot outputs of the job)
Consumer = Callable[[RowChunk, dict[str, np.ndarray], dict[str, np.ndarray]], None]

_ids = itertools.count(1)


@dataclass
class JobStats:
    batches: int = 0
    rows: int = 0
    queue_seconds: float = 0.0
    compute_seconds: float = 0.0


class Job:
    """Rows of one request; the engine's schedulers take them and report results back."""

    def __init__(
        self,
        *,
        constants: dict[str, np.ndarray],
        rows: Iterator[RowChunk],
        total_rows: int,
        consume: Consumer,
        deadline: float | None = None,
        label: str = "",
        eager: bool = False,
        tenant: str = "anonymous",
        partial: bool = False,
    ) -> None:
        self.id = next(_ids)
        self.label = label
        self.constants = constants
        self.total_rows = total_rows
        self.deadline = deadline  # time.monotonic() seconds
        # One step of an iterative method: these rows are all it has and its request waits on them,
        # so a batch holding only such jobs does not wait max_delay for more rows.
        self.eager = eager
        self.tenant = tenant  # who asked: quotas and priority are per tenant
        # Its request takes the rows so far at the deadline (allow_partial): admission does not refuse
        # it for lack of time.
        self.partial = partial
        self.priority = "interactive"  # the tenant's priority class, set when the engine admits the job
        self._rows = rows
        self._buffer: RowChunk | None = None
        self._buffer_offset = 0
        self._consume = consume
        self.taken = 0
        self.done_rows = 0
        self.stats = JobStats()
        self.submitted_at = 0.0
        self.started = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.failed: BaseException | None = None

    @property
    def remaining(self) -> int:
        """Rows not yet handed to a batch."""
        return 0 if self.finished else self.total_rows - self.taken

    @property
    def untaken(self) -> int:
        """Rows never handed to a batch, finished or not (what the queue account still holds)."""
        return self.total_rows - self.taken

    @property
    def finished(self) -> bool:
        return self.done.done()

    def take(self, count: int) -> RowChunk:
        """The next `count` rows (fewer at the end), concatenated from the lazy chunks."""
        parts: list[RowChunk] = []
        wanted = min(count, self.total_rows - self.taken)
        while wanted > 0:
            if self._buffer is None:
                self._buffer = next(self._rows)
                self._buffer_offset = 0
            size = chunk_rows(self._buffer)
            n = min(wanted, size - self._buffer_offset)
            parts.append({k: v[self._buffer_offset : self._buffer_offset + n] for k, v in self._buffer.items()})
            self._buffer_offset += n
            if self._buffer_offset == size:
                self._buffer = None
            wanted -= n
            self.taken += n
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def deliver(self, codes: RowChunk, row_outputs: dict[str, np.ndarray], slot_outputs: dict[str, np.ndarray]) -> None:
        """Hand one batch's results for this job to the reducer; finish when all rows are in."""
        if self.finished:
            return
        try:
            self._consume(codes, row_outputs, slot_outputs)
        except BaseException as exc:  # a reducer bug must fail this request, not the engine
            self.fail(exc)
            return
        self.done_rows += chunk_rows(codes)
        if self.done_rows >= self.total_rows:
            self.done.set_result(None)

    def fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.failed = exc
            self.done.set_exception(exc)
            # The awaiting request may already be gone (cancelled); do not warn about it.
            self.done.exception()

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


def chunk_rows(chunk: RowChunk) -> int:
    return len(next(iter(chunk.values())))
