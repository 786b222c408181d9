"""The device queue: one worker thread per device running batches, short requests first.

Every scheduler on a device submits its batches here. The worker takes, first, a batch holding a
request of at most one batch of rows (the smallest such request first), so a 20-row request waits for
at most the batch that is already running, not behind a 50,000-row job's queued batches. Among the
other batches it takes the priority class owed the most device time (`ClassShare`: weighted fair
share, interactive 4 : batch 1 by default), then the earliest deadline, then the smallest request,
then submission order. Each scheduler keeps at most two batches queued, so large jobs still advance
between small ones.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import math
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import threadpoolctl

T = TypeVar("T")
log = logging.getLogger(__name__)


def lower_thread_priority(nice: int) -> None:
    """Add `nice` to the calling thread's niceness (Linux: a per-thread attribute that threads it starts
    inherit). Compute threads that yield to the event loop keep gRPC, health checks and the next batch's
    preparation prompt while every core computes; without contention nothing changes."""
    if nice > 0 and sys.platform == "linux":
        tid = threading.get_native_id()
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
        except OSError as exc:  # a sandbox that forbids it: run at the server's priority
            log.warning("compute threads keep the server's priority", extra={"reason": str(exc)})


def limit_blas_threads(threads: int) -> None:
    """Limit numpy's BLAS (OpenBLAS, MKL) to `threads` for the whole process (0: leave it as it is).
    OpenBLAS's idle workers busy-wait after each call: in a server whose numpy work is small (Kernel SHAP
    and LIME regressions, mask sums) they spun ~0.5 s of a core per image Kernel SHAP request on 2 cores,
    taking it from onnxruntime (measured: 552 -> 263 ms per request with 1 thread)."""
    if threads > 0:
        threadpoolctl.threadpool_limits(limits=threads, user_api="blas")


def in_lowered_thread(fn: Callable[[], T], nice: int) -> T:
    """fn() in a new thread of lowered priority: onnxruntime's pool threads, started when a session is
    created, inherit it. (Priority cannot be raised back without privileges, hence a throwaway thread.)"""
    if nice <= 0 or sys.platform != "linux":
        return fn()
    outcome: dict[str, Any] = {}

    def target() -> None:
        lower_thread_priority(nice)
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # re-raised in the caller
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="explaind-session")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@dataclass(frozen=True)
class BatchPriority:
    """Where a batch stands in the device queue (see the module docstring)."""

    size: int                   # rows of the smallest request in the batch
    short: bool = False         # it holds a request of at most one batch of rows
    klass: str = ""             # the priority class of the batch's leading job
    deadline: float = math.inf  # the leading job's deadline (time.monotonic()); inf: none


class ClassShare:
    """Weighted fair share of device time between priority classes (thread-safe: the schedulers charge
    and pick on the event loop, the device worker picks on its thread).

    Each class is charged the device seconds of the rows it is given, divided by its weight; the class
    with pending work and the least charge is served next. A class that becomes active again is lifted
    to the least charge of the classes already active, so idle time banks no credit.
    """

    def __init__(self, weights: dict[str, float]) -> None:
        self.weights = dict(weights)
        self._rank = {name: i for i, name in enumerate(weights)}  # ties: the first class listed
        self._charged = {name: 0.0 for name in weights}
        self._active = {name: 0 for name in weights}
        self._lock = threading.Lock()

    def started(self, klass: str) -> None:
        """A job of `klass` is admitted."""
        with self._lock:
            if self._active[klass] == 0:
                others = [self._charged[c] for c, n in self._active.items() if n and c != klass]
                if others:
                    self._charged[klass] = max(self._charged[klass], min(others))
            self._active[klass] += 1

    def ended(self, klass: str) -> None:
        with self._lock:
            self._active[klass] -= 1

    def charge(self, klass: str, seconds: float) -> None:
        with self._lock:
            self._charged[klass] += seconds / self.weights[klass]

    def pick(self, classes: set[str]) -> str:
        """Of `classes` (those with work waiting), the one to serve next."""
        with self._lock:
            return min(classes, key=lambda c: (self._charged.get(c, 0.0), self._rank.get(c, len(self._rank))))


@dataclass
class _Entry:
    priority: BatchPriority
    order: int
    call: Callable[[], Any]
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class DeviceQueue:
    def __init__(self, name: str, nice: int = 0) -> None:
        self._nice = nice
        self._entries: list[_Entry] = []
        self._order = itertools.count()
        self._ready = threading.Condition()
        self._closed = False
        self.share: ClassShare | None = None  # set by the engine: classes share the device by weight
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, priority: int | BatchPriority, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        """Run fn(*args) on the device thread; `priority` a BatchPriority, or an int: the request size
        alone (smaller first)."""
        if not isinstance(priority, BatchPriority):
            priority = BatchPriority(priority)
        entry = _Entry(priority, next(self._order), lambda: fn(*args))
        with self._ready:
            if self._closed:
                raise RuntimeError("the device queue is closed")
            self._entries.append(entry)
            self._ready.notify()
        return entry.future

    def _next(self) -> _Entry:
        """The entry to run next (called with the lock held; entries are few: two per scheduler)."""
        entries = self._entries
        short = [e for e in entries if e.priority.short]
        if short:
            best = min(short, key=lambda e: (e.priority.size, e.order))
        else:
            classes = {e.priority.klass for e in entries}
            chosen = self.share.pick(classes) if self.share is not None and len(classes) > 1 else ""
            best = min(entries, key=lambda e: (e.priority.klass != chosen if chosen else False,
                                               e.priority.deadline, e.priority.size, e.order))
        entries.remove(best)
        return best

    def _work(self) -> None:
        lower_thread_priority(self._nice)  # the device thread runs onnxruntime's first intra-op thread
        while True:
            with self._ready:
                while not self._entries and not self._closed:
                    self._ready.wait()
                if not self._entries:
                    return
                entry = self._next()
            future = entry.future
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(entry.call())
            except BaseException as exc:  # handed to the awaiting scheduler
                future.set_exception(exc)

    def shutdown(self) -> None:
        """Finish what is queued, then stop the thread."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join()
