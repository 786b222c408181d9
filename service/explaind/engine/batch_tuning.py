"""A variant's batch size picked from measurement when its session is built, not fixed by
`max_batch_rows` alone.

Rows per second of an onnxruntime graph depend on the batch: too small and each run's fixed cost
(operator dispatch, thread wake-up) dominates, too large and the activations fall out of the caches;
where the optimum lies differs between a model's forward graph and its gradient graph (measured on
the `shapes` CNN: the plain-gradient graph's best batch was 32 or 64 where the forward's was 64 or
128; benchmarks/gradient_graph.py). With `batch_tuning_s` > 0 the engine times the new session on
synthetic rows (zeros; "jobs" dims 1, "rows" dims the candidate) at each candidate, `max_batch_rows`
and its halvings down to an eighth (the configured value stays the cap: it also bounds memory and
latency), and the variant's batches take the fastest (the configured one unless another is over 5% faster). Rows are independent, so results do not
depend on the batch size.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

# The configured size is kept unless another candidate is faster by more than this factor's margin:
# timings on a shared machine vary by several percent between loops.
KEEP_CONFIGURED = 0.95

_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
          "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(float16)": np.float16}


def candidates(configured: int) -> list[int]:
    """`configured` and its halvings down to an eighth (at least 1), ascending."""
    sizes = {configured}
    for divisor in (2, 4, 8):
        if configured // divisor >= 1:
            sizes.add(configured // divisor)
    return sorted(sizes)


def synthetic_feed(session: ort.InferenceSession, rows: int) -> dict[str, np.ndarray] | None:
    """Zeros for every input, one job and `rows` rows; None when an input has another free dim."""
    feed = {}
    for arg in session.get_inputs():
        dtype = _TYPES.get(arg.type)
        if dtype is None:
            return None
        shape = []
        for dim in arg.shape:
            if isinstance(dim, int):
                shape.append(dim)
            elif dim == "jobs":
                shape.append(1)
            elif dim == "rows":
                shape.append(rows)
            else:
                return None
        feed[arg.name] = np.zeros(shape, dtype)
    return feed


def rows_per_second(session: ort.InferenceSession, feed: dict[str, np.ndarray], rows: int, seconds: float) -> float:
    """Median of three timed loops of `seconds` / 3 (at least one run each), after one warm-up run."""
    session.run(None, feed)
    rates = []
    for _ in range(3):
        runs, start = 0, time.perf_counter()
        while runs == 0 or time.perf_counter() - start < seconds / 3:
            session.run(None, feed)
            runs += 1
        rates.append(runs * rows / (time.perf_counter() - start))
    return sorted(rates)[1]


def tune_batch_rows(session: ort.InferenceSession, configured: int, seconds: float) -> tuple[int, dict[int, float]]:
    """(the chosen candidate, rows/s per candidate); (configured, {}) when it cannot be measured."""
    measured: dict[int, float] = {}
    for rows in candidates(configured):
        feed = synthetic_feed(session, rows)
        if feed is None:
            return configured, {}
        try:
            measured[rows] = rows_per_second(session, feed, rows, seconds)
        except Exception as exc:  # zeros are not a valid input for every variant (e.g. index tables)
            log.info("batch tuning skipped", extra={"reason": str(exc)[:200]})
            return configured, {}
    best = max(measured, key=measured.__getitem__)
    if measured[configured] >= KEEP_CONFIGURED * measured[best]:
        return configured, measured
    return best, measured
