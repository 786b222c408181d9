"""Deadlines, cancellation, a full queue and graceful shutdown, on servers of their own."""

from __future__ import annotations

import re
import signal
import threading
import urllib.request

import grpc
import numpy as np
import pytest

from explaind_client import Progress, build_request

from _server import start_server, stop_server
from _server import wait_until as poll_until

X = np.zeros((3, 64, 64), np.float32)


def queued_rows(server) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    return sum(float(v) for v in re.findall(r'^explaind_queue_rows\{[^}]*\} (\S+)$', text, re.M))


def wait_until(condition, timeout: float = 10.0) -> bool:
    return poll_until(condition, timeout)


def test_deadline_and_cancellation_drop_pending_rows(server, client):
    with pytest.raises(grpc.RpcError) as err:
        client.explain("shapes", method="rise", tensor=X, params={"num_masks": 50_000}, timeout=1.0)
    # Refused at once when the server already knows what RISE costs (admission: it cannot finish in 1 s);
    # admitted and expired when it does not yet (the first RISE request of a fresh server).
    assert err.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert wait_until(lambda: queued_rows(server) == 0), "the expired request's rows stayed queued"

    stream = client.stub.ExplainStream(build_request("shapes", method="rise", tensor=X,
                                                     params={"num_masks": 50_000}))  # no deadline to weigh
    for update in stream:
        if update.WhichOneof("kind") == "progress" and update.progress.rows_done > 0:
            break
    assert queued_rows(server) > 0
    stream.cancel()
    assert wait_until(lambda: queued_rows(server) == 0), "the cancelled request's rows stayed queued"
    assert server.health() == "SERVING"
    result = client.explain("shapes", method="rise", tensor=X, params={"num_masks": 100})
    assert result.stats["model_evaluations"] == "101"


def test_a_full_queue_refuses_at_once(repository, tmp_path):
    server = start_server(repository, tmp_path / "server.log", max_queued_rows=6000)
    try:
        with server.client() as client:
            first: dict = {}
            thread = threading.Thread(target=lambda: first.update(
                r=client.explain("shapes", method="rise", tensor=X, params={"num_masks": 5000})))
            thread.start()
            assert wait_until(lambda: queued_rows(server) > 0)
            with pytest.raises(grpc.RpcError) as err:
                client.explain("shapes", method="rise", tensor=X, params={"num_masks": 5000})
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "queue is full" in err.value.details()
            assert thread.is_alive()  # refused at once, while the first request still runs
            thread.join(120)
            assert first["r"].stats["model_evaluations"] == "5001"
    finally:
        assert stop_server(server) == 0


def test_sigterm_finishes_calls_in_flight_refuses_new_ones_and_exits_zero(repository, tmp_path):
    server = start_server(repository, tmp_path / "server.log", grace_period_s=60)
    with server.client() as client:
        results: dict = {}

        def long_call() -> None:
            updates = list(client.explain_stream("shapes", method="rise", tensor=X, params={"num_masks": 4000}))
            results["final"] = updates[-1]

        thread = threading.Thread(target=long_call)
        thread.start()
        assert wait_until(lambda: queued_rows(server) > 0)
        server.process.send_signal(signal.SIGTERM)
        assert wait_until(lambda: server.health() == "NOT_SERVING", 5)
        with pytest.raises(grpc.RpcError) as err:
            client.explain("shapes", method="occlusion", tensor=X)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in err.value.details()
        thread.join(120)
        assert not isinstance(results["final"], Progress)
        assert results["final"].attribution.shape == (64, 64)
        assert results["final"].stats["model_evaluations"] == "4001"
    assert server.process.wait(60) == 0, server.log()
    assert '"msg": "stopped"' in server.log()
