"""Admission through a real server: refusals at once with RESOURCE_EXHAUSTED, the retry hint in the
trailing metadata `retry-after-ms` at a real client, quotas from a tenants file, metrics by tenant."""

from __future__ import annotations

import time
import urllib.request

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from explaind_client import build_request
from explaind_client.v1 import explaind_pb2_grpc as pb_grpc

from _server import DEMO, start_server, stop_server


@pytest.fixture(scope="module")
def quota_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("overload")
    tenants = root / "tenants.yaml"
    tenants.write_text("tenants:\n  anonymous: {priority: interactive, rows_in_flight: 60000}\n")
    server = start_server(DEMO / "repository", root / "server.log", tenants=tenants)
    yield server
    assert stop_server(server) == 0, server.log()


def metric(server, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def rise(masks: int):
    x = np.random.default_rng(3).normal(size=(3, 64, 64)).astype(np.float32)
    return build_request("shapes", method="rise", tensor=x, seed=5, params={"num_masks": masks})


def test_refusals_name_the_deadline_or_the_quota_and_carry_a_retry_hint(quota_server):
    with grpc.insecure_channel(quota_server.address) as channel:
        stub = pb_grpc.ExplainerStub(channel)
        stub.Explain(rise(512), timeout=60)  # the method's cost per row is measured

        # 50,000 masks cannot be done in 0.3 s, even alone: refused before any row runs.
        with pytest.raises(grpc.RpcError) as late:
            stub.Explain(rise(50_000), timeout=0.3)
        assert late.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "cannot finish this request before its deadline" in late.value.details()
        assert "even with nothing queued" in late.value.details()
        assert [key for key, _ in late.value.trailing_metadata()].count("retry-after-ms") == 1

        # One request holds 50,001 rows in flight; another of 20,001 would pass the quota of 60,000.
        stream = stub.ExplainStream(rise(50_000))  # no deadline: only the quota applies
        first = next(stream)
        assert first.WhichOneof("kind") == "progress"
        with pytest.raises(grpc.RpcError) as over:
            stub.Explain(rise(20_000), timeout=60)
        stream.cancel()
    assert over.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert over.value.details().startswith("tenant 'anonymous' is over its rows_in_flight quota: ")
    assert "of 60000 rows in flight; this request needs 20001: retry in " in over.value.details()
    hints = [int(value) for key, value in over.value.trailing_metadata() if key == "retry-after-ms"]
    assert len(hints) == 1 and hints[0] >= 1
    # The same hint as gRPC's standard server pushback, which gRPC's retry policy honours.
    assert [int(v) for k, v in over.value.trailing_metadata() if k == "grpc-retry-pushback-ms"] == hints

    assert metric(quota_server, "explaind_tenant_refused_total", tenant="anonymous", reason="deadline") == 1
    assert metric(quota_server, "explaind_tenant_refused_total", tenant="anonymous", reason="rows_in_flight") == 1
    assert metric(quota_server, "explaind_requests_total", model="shapes", method="rise",
                  code="RESOURCE_EXHAUSTED") == 2
    assert metric(quota_server, "explaind_tenant_rows_total", tenant="anonymous") >= 513
    for _ in range(100):  # the cancelled request's rows leave the count
        if metric(quota_server, "explaind_tenant_rows_in_flight", tenant="anonymous") == 0:
            break
        time.sleep(0.1)
    assert metric(quota_server, "explaind_tenant_rows_in_flight", tenant="anonymous") == 0


def test_a_flood_of_refusals_is_logged_once_per_burst_with_the_count(quota_server):
    before = quota_server.log()
    with grpc.insecure_channel(quota_server.address) as channel:
        stub = pb_grpc.ExplainerStub(channel)
        for _ in range(30):
            with pytest.raises(grpc.RpcError) as late:
                stub.Explain(rise(50_000), timeout=0.3)
            assert late.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        stub.Explain(rise(64), timeout=60)  # other outcomes keep their line each
    log = quota_server.log()
    new = log[len(before):].splitlines()
    # 30 refusals in well under the 10 s burst interval: at most one line (none if the last logged
    # refusal was less than 10 s ago), which counts the ones held back; the OK call has its own line.
    assert len([line for line in new if "RESOURCE_EXHAUSTED" in line]) <= 1
    assert len([line for line in new if "code=OK" in line or '"code": "OK"' in line]) == 1, new
    assert metric(quota_server, "explaind_requests_total", model="shapes", method="rise", code="RESOURCE_EXHAUSTED") == 32
