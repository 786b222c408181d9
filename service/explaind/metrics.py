"""Prometheus metrics, one registry per server (no process-global state).

Requests by model, method and status code; request latency; the engine's queue depth in rows and in
jobs; batch sizes; rows evaluated (rate() of the counter gives rows per second, and a gauge keeps a
10-second moving figure for dashboards without PromQL).
"""

from __future__ import annotations

import collections
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("explaind_requests", "Explain requests by outcome",
                                ["model", "method", "code"], registry=r)
        self.request_seconds = Histogram("explaind_request_seconds", "Explain latency, arrival to result",
                                         ["model", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_rows = Gauge("explaind_queue_rows", "Rows waiting in the engine",
                                ["model", "variant"], registry=r)
        self.queue_jobs = Gauge("explaind_queue_jobs", "Jobs with rows waiting in the engine",
                                ["model", "variant"], registry=r)
        self.batch_rows = Histogram("explaind_batch_rows", "Rows per engine batch",
                                    ["model", "variant"], buckets=BATCH_BUCKETS, registry=r)
        self.batch_jobs = Histogram("explaind_batch_jobs", "Jobs sharing one engine batch",
                                    ["model", "variant"], buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("explaind_batch_seconds", "Model time per engine batch",
                                       ["model", "variant"], buckets=LATENCY_BUCKETS, registry=r)
        self.rows = Counter("explaind_rows", "Rows evaluated by the model", ["model", "variant"], registry=r)
        self.rows_per_second = Gauge("explaind_rows_per_second", "Rows evaluated per second, last 10 s",
                                     registry=r)
        self.sessions = Gauge("explaind_sessions", "onnxruntime sessions held (graph variants), at most max_sessions",
                              registry=r)
        self.session_bytes = Gauge("explaind_session_bytes", "Serialized size of the graphs of the sessions held, "
                                   "at most max_session_bytes", registry=r)
        self.evictions = Counter("explaind_session_evictions", "Idle sessions closed to stay within max_sessions "
                                 "and max_session_bytes", registry=r)
        self.undecodable_requests = Counter("explaind_undecodable_requests", "Requests whose bytes are not a "
                                            "message of the RPC's request type (answered INVALID_ARGUMENT)",
                                            ["rpc"], registry=r)
        self.refused = Counter("explaind_refused", "Requests refused because the engine queue was full",
                               ["model"], registry=r)
        # Tenant labels: the names in the tenants file, "anonymous", and "default" for any other name.
        self.tenant_rows = Counter("explaind_tenant_rows", "Rows evaluated for each tenant", ["tenant"], registry=r)
        self.tenant_refused = Counter("explaind_tenant_refused", "Requests refused at admission, by tenant and "
                                      "reason (deadline, queue, rows_in_flight, rows_per_second)",
                                      ["tenant", "reason"], registry=r)
        self.tenant_rows_in_flight = Gauge("explaind_tenant_rows_in_flight", "Rows admitted for each tenant "
                                           "and not yet evaluated", ["tenant"], registry=r)
        self._window: collections.deque[tuple[float, int]] = collections.deque()
        self._window_rows = 0
        self._lock = threading.Lock()

    def record_batch(self, model: str, variant: str, rows: int, jobs: int, seconds: float) -> None:
        self.batch_rows.labels(model, variant).observe(rows)
        self.batch_jobs.labels(model, variant).observe(jobs)
        self.batch_seconds.labels(model, variant).observe(seconds)
        self.rows.labels(model, variant).inc(rows)
        now = time.monotonic()
        with self._lock:
            self._window.append((now, rows))
            self._window_rows += rows
            while self._window[0][0] < now - 10.0:
                self._window_rows -= self._window.popleft()[1]
            span = max(now - self._window[0][0], 1.0)
            self.rows_per_second.set(self._window_rows / span)

    def serve(self, port: int, host: str = "127.0.0.1") -> object:
        """Start the /metrics HTTP endpoint in a daemon thread; returns the HTTP server (OSError when
        the port is taken)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
