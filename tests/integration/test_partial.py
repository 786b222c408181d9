"""Anytime answers (ExplainRequest.allow_partial) and the codes deadlines and cancellations are counted
under, on a server of their own: partial maps every 1% of the rows (so a stream cut by a deadline
still carries several), and the demo models in small batches (16 rows for shapes, 64 coalitions of
100 background rows for tabular) so that a deadline falls after many batches, not inside the first.

A partial answer must equal the method run in process over the same first rows (tests/inprocess.py
`first_rows`): the same seed draws the same codes in the same order, so the rows a deadline leaves
are a prefix of the planned ones. RISE folds its batches fast, so one deadline after a warm-up must
give an OK partial answer (the stop comes early enough for the answer to arrive). For the slower
methods how many rows a deadline leaves depends on the machine, so those checks try deadlines from
short to long until one cuts the request (`partial_answer`); a try cut before any row ends with
DEADLINE_EXCEEDED, and one that lets the request finish ends the search with a failure (the request
is not long enough to test anything).
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest
from explaind_client import build_request
from explaind_client.tensors import from_proto
from explaind_client.v1 import explaind_pb2 as pb
from explaind_client.v1 import explaind_pb2_grpc as pb_grpc
from prometheus_client.parser import text_string_to_metric_families

from explaind.explainer import ExplainQuery
from explaind.methods.registry import all_methods

from _server import DEMO, Server, make_repository, start_server, stop_server
from inprocess import first_rows, serve_request

DEADLINES = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4)
TABULAR_X = np.load(DEMO / "repository" / "tabular" / "background.npy")[7].astype(np.float32)


@pytest.fixture(scope="module")
def small_batches(tmp_path_factory) -> Path:
    """The demo repository with smaller batches (see the module's docstring)."""
    repo = make_repository(tmp_path_factory.mktemp("partial-repo"))
    for name, rows in (("shapes", 16), ("tabular", 64)):
        config = repo / name / "model.yaml"
        lines = [f"batching: {{max_batch_rows: {rows}, max_delay_ms: 2}}" if line.startswith("batching:") else line
                 for line in config.read_text().splitlines()]
        config.write_text("\n".join(lines) + "\n")
    return repo


@pytest.fixture(scope="module")
def partial_server(small_batches, tmp_path_factory) -> Iterator[Server]:
    # Deadline admission off: these tests need requests that start and then meet their deadline.
    srv = start_server(small_batches, tmp_path_factory.mktemp("partial") / "server.log", max_num_masks=60_000,
                       partial_every=0.01, admit_by_deadline=False)
    yield srv
    code = stop_server(srv)
    assert code == 0, srv.log()


@pytest.fixture(scope="module")
def stub(partial_server) -> Iterator[pb_grpc.ExplainerStub]:
    with grpc.insecure_channel(partial_server.address) as channel:
        yield pb_grpc.ExplainerStub(channel)


@pytest.fixture(scope="module")
def image(example_image) -> bytes:
    return example_image[0]


def request(method: str, params: dict, *, allow_partial: bool = True, seed: int = 11, **kwargs) -> pb.ExplainRequest:
    return build_request(kwargs.pop("model", "shapes"), method=method, params=params, seed=seed,
                         allow_partial=allow_partial, **kwargs)


def warm_up(stub: pb_grpc.ExplainerStub, message: pb.ExplainRequest, **small: object) -> None:
    """The same request with fewer rows (`small`: its method's parameters to change), whole: the variants'
    sessions are built before a deadline is tried (building one can take longer than a deadline)."""
    warm = pb.ExplainRequest()
    warm.CopyFrom(message)
    params = getattr(warm, warm.WhichOneof("method"))
    for name, value in small.items():
        if isinstance(value, list):
            getattr(params, name)[:] = value
        else:
            setattr(params, name, value)
    assert stub.Explain(warm, timeout=120).complete


def partial_answer(stub: pb_grpc.ExplainerStub, message: pb.ExplainRequest, **small: object) -> pb.ExplainResponse:
    """The first answer a deadline cuts short, trying DEADLINES in turn after a warm_up(message, **small)."""
    warm_up(stub, message, **small)
    for timeout in DEADLINES:
        try:
            response = stub.Explain(message, timeout=timeout)
        except grpc.RpcError as err:
            # Cut before any row (during the prediction or a segmentation, or with no batch folded in).
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err
            # The batches on the device at the stop still run: let them end before the next try.
            time.sleep(max(1.0, timeout))
            continue
        assert response.complete is False, f"the request finished within {timeout} s: too short to cut"
        return response
    pytest.fail(f"no deadline in {DEADLINES} gave a partial answer")


def attribution(response: pb.ExplainResponse) -> np.ndarray:
    return from_proto(response.attribution)


def in_process(method: str, params: dict, rows: int, **inputs) -> object:
    """The method over its first `rows` rows, in process, from the same seed (the reference), on the
    demo repository (its own batches: the answer does not depend on them)."""
    query = ExplainQuery(model=inputs.pop("model", "shapes"), method=method, params=params, seed=11, **inputs)
    return serve_request(query, methods={method: first_rows(all_methods()[method], rows)})


def assert_partial_stats(response: pb.ExplainResponse, planned: int, per_row: int = 1) -> int:
    """The stats of a partial answer: rows used (after the prediction's one) below the planned; returns them."""
    stats = response.stats
    assert not response.complete
    assert stats.planned_evaluations == planned
    used = stats.model_evaluations - 1
    assert 0 < used < planned - 1 and used % per_row == 0, (stats.model_evaluations, planned)
    assert stats.batches >= 2 and stats.stages == 2 and stats.compute_seconds > 0
    return used // per_row


# Partial answers equal the method over the rows used ---------------------------------------------

def test_rise_partial_answer_is_rise_over_the_masks_used(stub, image):
    message = request("rise", {"num_masks": 60_000}, image=image)
    warm_up(stub, message, num_masks=50)
    response = stub.Explain(message, timeout=1.0)  # OK: the answer came before the deadline
    masks = assert_partial_stats(response, planned=60_001)
    reference = in_process("rise", {"num_masks": 60_000}, masks, image=image)
    expected = reference.attribution
    np.testing.assert_allclose(attribution(response), expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    assert response.target_class == reference.target_class


def test_occlusion_partial_answer_is_occlusion_over_the_windows_used(stub, image):
    params = {"window": [2], "stride": [1]}  # 63 x 63 windows and the unoccluded input
    response = partial_answer(stub, request("occlusion", params, image=image), stride=[16])
    windows = assert_partial_stats(response, planned=1 + 63 * 63 + 1) - 1  # the first row is the unoccluded input
    expected = in_process("occlusion", params, windows + 1, image=image).attribution
    got = attribution(response)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    # Coarse to fine: even a cut answer spreads over the image, not only its top rows.
    rows_with_values = np.nonzero(np.abs(got).max(axis=1) > 0)[0]
    assert rows_with_values.max() >= 48, rows_with_values


def test_lime_partial_answer_is_the_surrogate_of_the_samples_used(stub, image):
    # slic: ~100 superpixels, so samples do not repeat (quickshift's 3-5 would leave at most 32 distinct images)
    params = {"num_samples": 50_000, "segmentation": "slic"}
    response = partial_answer(stub, request("lime", params, image=image), num_samples=50)
    samples = assert_partial_stats(response, planned=50_001)
    reference = in_process("lime", params, samples, image=image)
    np.testing.assert_allclose(attribution(response), reference.attribution, rtol=1e-4, atol=1e-7)
    # R^2 = 1 - SSres / Cyy from the sufficient statistics: with ~100 superpixels and a few hundred samples
    # SSres is a small difference of large sums, so the float32 scores' rounding in other batch compositions
    # moves it by up to ~3e-3 (measured 2.4e-3 before the distinct-image change too).
    assert response.figures["weighted_r2"] == pytest.approx(reference.figures["weighted_r2"], abs=1e-2)
    assert response.figures["samples"] == samples
    assert samples > response.figures["num_features"]  # one per superpixel and the intercept at least


def test_kernel_shap_partial_answer_is_the_regression_over_the_coalitions_used(stub):
    # All 2^13 - 2 coalitions of the 13 features, in shap's order (size 1 and 12, 2 and 11, ...), each
    # over the 100 background rows: a prefix of them has the same weights in the reference.
    params = {"nsamples": 8190}
    response = partial_answer(stub, request("kernel_shap", params, model="tabular", tensor=TABULAR_X), nsamples=26)
    rows = assert_partial_stats(response, planned=1 + (8190 + 2) * 100, per_row=100)
    reference = in_process("kernel_shap", params, rows, model="tabular", tensor=TABULAR_X)
    got = attribution(response)
    np.testing.assert_allclose(got, reference.attribution, rtol=1e-5, atol=1e-7)
    # Efficiency holds for a partial answer too.
    assert got.sum() == pytest.approx(response.figures["f_x"] - response.figures["base_value"], abs=1e-5)


def test_image_kernel_shap_partial_answer_is_the_regression_over_the_coalitions_used(stub, image):
    # 109 SLIC superpixels: sizes 1 and 2 enumerated, then sampled coalitions, whose weights (draw counts
    # over the draws of the rows used) can differ from the reference's by draws that repeat a used row
    # among the rows drawn but not used (those in flight at the deadline): rarely, and slightly.
    params = {"nsamples": 200_000, "segmentation": "slic"}
    response = partial_answer(stub, request("kernel_shap", params, image=image), nsamples=200)
    rows = assert_partial_stats(response, planned=200_003)
    reference = in_process("kernel_shap", params, rows, image=image)
    got, expected = from_proto(response.arrays["segment_weights"]), reference.arrays["segment_weights"]
    assert np.linalg.norm(got - expected) <= 0.01 * np.linalg.norm(expected)
    assert got.sum() == pytest.approx(response.figures["f_x"] - response.figures["base_value"], abs=1e-4)


def test_smooth_grad_partial_answer_is_the_mean_over_the_samples_used(stub, image):
    params = {"num_samples": 50_000}
    response = partial_answer(stub, request("smooth_grad", params, image=image), num_samples=5)
    samples = assert_partial_stats(response, planned=50_001)
    expected = in_process("smooth_grad", params, samples, image=image).attribution
    np.testing.assert_allclose(attribution(response), expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


# What has no partial answer ----------------------------------------------------------------------

def test_without_allow_partial_the_deadline_is_exceeded(stub, image):
    with pytest.raises(grpc.RpcError) as err:
        stub.Explain(request("rise", {"num_masks": 60_000}, image=image, allow_partial=False), timeout=1.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_gradient_method_has_no_partial_answer(stub, image):
    params = {"n_steps": 200_000, "method": "riemann_middle"}
    with pytest.raises(grpc.RpcError) as err:
        stub.Explain(request("integrated_gradients", params, image=image), timeout=2.0)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_complete_answers_say_so_and_planned_equals_used(stub, image):
    for allow_partial in (False, True):
        response = stub.Explain(request("rise", {"num_masks": 300}, image=image, allow_partial=allow_partial),
                                timeout=60)
        assert response.complete is True
        assert response.stats.model_evaluations == response.stats.planned_evaluations == 301


def test_the_python_client_and_the_cli_ask_for_partial_answers_and_say_when_they_got_one(partial_server, image,
                                                                                          tmp_path):
    with partial_server.client() as client:
        warm_up(client.stub, request("rise", {"num_masks": 60_000}, image=image), num_masks=50)
        partial = client.explain("shapes", method="rise", params={"num_masks": 60_000}, image=image, seed=11,
                                 allow_partial=True, timeout=1.0)
        assert partial.complete is False and 1 < int(partial.stats["model_evaluations"]) < 60_001
        assert client.explain("shapes", method="rise", params={"num_masks": 100}, image=image).complete is True
        with_partial = {m.name for m in client.list_methods() if m.partial_results}
    assert with_partial == {"rise", "occlusion", "lime", "kernel_shap", "smooth_grad"}

    path = tmp_path / "input.png"
    path.write_bytes(image)
    command = [sys.executable, "-m", "explaind.cli", "explain", "--server", partial_server.address, "--model",
               "shapes", "--method", "rise", "--image", str(path), "--param", "num_masks=60000", "--seed", "11",
               "--timeout", "1.0"]
    cut = subprocess.run(command + ["--allow-partial"], capture_output=True, text=True, timeout=120)
    assert cut.returncode == 0, cut.stderr
    assert "partial answer: the deadline came first" in cut.stdout
    refused = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "DEADLINE_EXCEEDED" in refused.stderr


# Streams -----------------------------------------------------------------------------------------

def stream(stub: pb_grpc.ExplainerStub, message: pb.ExplainRequest, timeout: float) -> list[pb.ExplainUpdate]:
    return list(stub.ExplainStream(message, timeout=timeout))


def test_stream_cut_by_the_deadline_ends_with_the_partial_result_and_real_partial_stats(stub, image):
    message = request("rise", {"num_masks": 60_000}, image=image)
    warm_up(stub, message, num_masks=50)
    for timeout in DEADLINES[2:]:
        updates = stream(stub, message, timeout)
        partials = [u.partial for u in updates if u.WhichOneof("kind") == "partial"]
        if len(partials) >= 3:
            break
    else:
        pytest.fail("no deadline gave a stream of three partial maps")
    result = updates[-1]
    assert result.WhichOneof("kind") == "result"
    masks = assert_partial_stats(result.result, planned=60_001)
    evaluations = [p.stats.model_evaluations for p in partials]
    assert evaluations == sorted(set(evaluations)) and evaluations[0] > 1, evaluations
    assert evaluations[-1] <= result.result.stats.model_evaluations
    assert all(not p.complete and p.stats.planned_evaluations == 60_001 for p in partials)
    batches = [p.stats.batches for p in partials]
    compute = [p.stats.compute_seconds for p in partials]
    assert batches == sorted(batches) and batches[0] >= 2 and compute == sorted(compute) and compute[0] > 0
    assert all(p.stats.seed == 11 and p.stats.method == "rise" for p in partials)
    # The map a partial update carries is RISE over the masks its stats count.
    last = partials[-1]
    expected = in_process("rise", {"num_masks": 60_000}, last.stats.model_evaluations - 1, image=image).attribution
    np.testing.assert_allclose(attribution(last), expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    assert masks >= last.stats.model_evaluations - 1


def test_stream_partial_maps_of_a_complete_request_carry_real_stats(stub, image):
    updates = stream(stub, request("rise", {"num_masks": 2000}, image=image, allow_partial=False), 60)
    partials = [u.partial for u in updates if u.WhichOneof("kind") == "partial"]
    assert len(partials) >= 50  # a partial map every 20 rows (1%), in batches of 16
    evaluations = [p.stats.model_evaluations for p in partials]
    assert evaluations == sorted(set(evaluations)) and evaluations[0] > 1 and evaluations[-1] < 2001
    assert all(not p.complete and p.stats.planned_evaluations == 2001 for p in partials)
    final = updates[-1].result
    assert final.complete and final.stats.model_evaluations == final.stats.planned_evaluations == 2001


# Metrics -----------------------------------------------------------------------------------------

def request_counts(server: Server) -> dict[str, float]:
    """explaind_requests_total of shapes/rise by code."""
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if (sample.name == "explaind_requests_total" and labels.get("model") == "shapes"
                    and labels.get("method") == "rise"):
                counts[labels["code"]] = sample.value
    return counts


def counted(server: Server, before: dict[str, float], code: str) -> dict[str, float]:
    """What changed since `before`, once `code` has been counted (the server records after the reply)."""
    end = time.monotonic() + 10
    while True:
        now = request_counts(server)
        changed = {k: v - before.get(k, 0.0) for k, v in now.items() if v != before.get(k, 0.0)}
        if code in changed or time.monotonic() > end:
            return changed
        time.sleep(0.05)


def test_deadline_expiry_and_cancellation_are_counted_under_their_own_codes(partial_server, stub, image):
    message = request("rise", {"num_masks": 60_000}, image=image, allow_partial=False)
    warm_up(stub, message, num_masks=50)
    for call in ("unary", "stream"):
        before = request_counts(partial_server)
        with pytest.raises(grpc.RpcError) as err:
            if call == "unary":
                stub.Explain(message, timeout=1.0)
            else:
                stream(stub, message, 1.0)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert counted(partial_server, before, "DEADLINE_EXCEEDED") == {"DEADLINE_EXCEEDED": 1.0}, call

    before = request_counts(partial_server)
    updates = stub.ExplainStream(message, timeout=60)
    for update in updates:
        if update.WhichOneof("kind") == "progress" and update.progress.rows_done > 0:
            break
    updates.cancel()
    assert counted(partial_server, before, "CANCELLED") == {"CANCELLED": 1.0}

    before = request_counts(partial_server)
    future = stub.Explain.future(message, timeout=60)
    time.sleep(1.0)
    future.cancel()
    assert counted(partial_server, before, "CANCELLED") == {"CANCELLED": 1.0}

    before = request_counts(partial_server)
    assert not stub.Explain(request("rise", {"num_masks": 60_000}, image=image), timeout=1.0).complete
    assert counted(partial_server, before, "OK") == {"OK": 1.0}
