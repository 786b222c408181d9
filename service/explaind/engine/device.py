"""The device queue: one worker thread per device running batches, smallest requests first.

Every scheduler on a device submits its batches here. The worker takes the batch whose smallest
request is smallest (ties in submission order), so a 20-row request waits for at most the batch
that is already running, not behind a 50,000-row job's queued batches. Each scheduler keeps at
most two batches queued, so large jobs still advance between small ones.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import itertools
import logging
import os
import sys
import threading
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


class DeviceQueue:
    def __init__(self, name: str, nice: int = 0) -> None:
        self._nice = nice
        self._heap: list[tuple[int, int, Callable[[], Any], concurrent.futures.Future]] = []
        self._order = itertools.count()
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, priority: int, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        """Run fn(*args) on the device thread; lower priority values run first."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the device queue is closed")
            heapq.heappush(self._heap, (priority, next(self._order), lambda: fn(*args), future))
            self._ready.notify()
        return future

    def _work(self) -> None:
        lower_thread_priority(self._nice)  # the device thread runs onnxruntime's first intra-op thread
        while True:
            with self._ready:
                while not self._heap and not self._closed:
                    self._ready.wait()
                if not self._heap:
                    return
                _, _, call, future = heapq.heappop(self._heap)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as exc:  # handed to the awaiting scheduler
                future.set_exception(exc)

    def shutdown(self) -> None:
        """Finish what is queued, then stop the thread."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join()
