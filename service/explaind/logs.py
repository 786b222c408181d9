"""Structured logs: one JSON object per line (or plain text), with the record's extra fields."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Callable

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD)
        text = f"{self.formatTime(record)} {record.levelname:<7} {record.name}: {record.getMessage()} {extras}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text.rstrip()


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


BURST_INTERVAL_S = 10.0


class BurstLog:
    """Logs the first event of a burst, then at most one line per ``interval_s`` with a count of the
    events it did not log in between ("suppressed"), so that a flood of one failure costs a few lines,
    not one per event. Thread-safe (the device thread and the event loop may both report)."""

    def __init__(self, logger: logging.Logger, interval_s: float = BURST_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic, level: int = logging.WARNING) -> None:
        self._logger = logger
        self._level = level
        self._interval_s = interval_s
        self._clock = clock
        self._last: float | None = None
        self._suppressed = 0
        self._lock = threading.Lock()

    def event(self, message: str, **extra: object) -> bool:
        """Record one event; True when it was logged."""
        now = self._clock()
        with self._lock:
            if self._last is not None and now - self._last < self._interval_s:
                self._suppressed += 1
                return False
            suppressed, self._suppressed, self._last = self._suppressed, 0, now
        self._logger.log(self._level, message, extra={**extra, "suppressed": suppressed,
                                                      "suppressed_seconds": self._interval_s})
        return True
