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
import threading
from typing import Any, Callable


class DeviceQueue:
    def __init__(self, name: str) -> None:
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
