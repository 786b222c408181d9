"""Per-model run health: a model whose runs keep failing is reported UNHEALTHY until it recovers.

Fed by the runners (one call per batch, on the device thread) and read by GetModel/ListModels (on the
event loop), hence the lock. A model turns unhealthy after FAIL_AFTER consecutive failed runs and
healthy again after RECOVER_AFTER consecutive successful ones: a model that fails only on some inputs
flips at most once per few runs, and one good batch does not hide a model that fails on most.
Counters are by model name; ``forget`` starts a model afresh (a new version loaded, a model unloaded).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

FAIL_AFTER = 3
RECOVER_AFTER = 3


@dataclass(frozen=True)
class HealthView:
    """What GetModel says of a model's runs."""

    healthy: bool = True
    run_failures: int = 0  # runs that failed since the model was loaded
    last_failure: str = ""  # the last failure's message, with when it happened
    recover_after: int = RECOVER_AFTER

    @property
    def reason(self) -> str:
        """Why the model is unhealthy, for ModelInfo.reason."""
        if self.healthy:
            return ""
        return (f"its runs keep failing ({self.run_failures} failed since it was loaded; READY again after "
                f"{self.recover_after} successful runs in a row); {self.last_failure}")


@dataclass
class _Counters:
    failures: int = 0
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    healthy: bool = True
    last_failure: str = ""


class ModelHealth:
    def __init__(self, fail_after: int = FAIL_AFTER, recover_after: int = RECOVER_AFTER) -> None:
        if fail_after < 1 or recover_after < 1:
            raise ValueError(f"fail_after and recover_after must be >= 1, got {fail_after} and {recover_after}")
        self._fail_after = fail_after
        self._recover_after = recover_after
        self._models: dict[str, _Counters] = {}
        self._lock = threading.Lock()

    def succeeded(self, model: str) -> None:
        with self._lock:
            counters = self._models.get(model)
            if counters is None:  # nothing to record until a model first fails
                return
            counters.consecutive_failures = 0
            counters.consecutive_successes += 1
            if not counters.healthy and counters.consecutive_successes >= self._recover_after:
                counters.healthy = True

    def failed(self, model: str, message: str) -> None:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self._lock:
            counters = self._models.setdefault(model, _Counters())
            counters.failures += 1
            counters.consecutive_failures += 1
            counters.consecutive_successes = 0
            counters.last_failure = f"last run failed at {when}: {message}"
            if counters.consecutive_failures >= self._fail_after:
                counters.healthy = False

    def of(self, model: str) -> HealthView:
        with self._lock:
            counters = self._models.get(model)
            if counters is None:
                return HealthView()
            return HealthView(counters.healthy, counters.failures, counters.last_failure, self._recover_after)

    def forget(self, model: str) -> None:
        with self._lock:
            self._models.pop(model, None)
