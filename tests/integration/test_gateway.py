"""The HTTP/JSON gateway on a real server (http_port): the same answers and errors as gRPC.

Each HTTP answer is compared with the gRPC call of the same request on the same server: the
attributions are equal (deterministic methods, or the same seed), errors carry the HTTP status of
the gRPC code by google.rpc's mapping and the same message. Bearer tokens and TLS as on the gRPC
port; server-sent events for the streams.
"""

from __future__ import annotations

import base64
import json
import ssl
from pathlib import Path
from typing import Iterator

import grpc
import httpx
import numpy as np
import pytest
from google.protobuf import json_format

from explaind_client.tensors import from_proto
from explaind_client.v1 import explaind_pb2 as pb

from _server import DEMO, Server, free_port, start_server, stop_server, wait_until
from test_security import ALICE, health_port_probe, pki  # noqa: F401  (pki: the certificates fixture)

ROW = [13.2, 2.1, 2.4, 19.0, 100.0, 2.3, 2.0, 0.4, 1.6, 5.0, 1.0, 2.6, 750.0]
# google/rpc/code.proto's HTTP mapping, written out here from the proto's comments.
HTTP = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404,
        grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.FAILED_PRECONDITION: 400,
        grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.UNAVAILABLE: 503}


@pytest.fixture(scope="module")
def gateway(repository, tmp_path_factory) -> Iterator[tuple[Server, httpx.Client]]:
    port = free_port()
    srv = start_server(repository, tmp_path_factory.mktemp("gateway") / "server.log", http_port=port,
                       max_message_bytes=1 << 20, http_max_instances=4)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
        yield srv, http
    assert stop_server(srv) == 0, srv.log()


@pytest.fixture(scope="module")
def stub(gateway):
    from explaind_client.v1 import explaind_pb2_grpc as pb_grpc
    channel = grpc.insecure_channel(gateway[0].address)
    yield pb_grpc.ExplainerStub(channel)
    channel.close()


def image(name: str = "star_0.png") -> bytes:
    return (DEMO / "examples" / name).read_bytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def attribution(explanation: dict) -> np.ndarray:
    return from_proto(json_format.ParseDict(explanation["attribution"], pb.Tensor()))


def grpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def events(response: httpx.Response) -> list[tuple[str, dict]]:
    """The (event, data) pairs of a server-sent-events body."""
    out = []
    for block in response.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


# Models, methods, metrics ---------------------------------------------------------------------

def test_models_methods_and_metrics_are_the_grpc_answers_in_json(gateway, stub):
    _, http = gateway
    for path, message in (("/v1/models", stub.ListModels(pb.ListModelsRequest())),
                          ("/v1/models/shapes", stub.GetModel(pb.GetModelRequest(name="shapes"))),
                          ("/v1/methods?model=tabular", stub.ListMethods(pb.ListMethodsRequest(model="tabular"))),
                          ("/v1/metrics?model=shapes", stub.ListMetrics(pb.ListMetricsRequest(model="shapes")))):
        response = http.get(path)
        assert response.status_code == 200, response.text
        parsed = json_format.ParseDict(response.json(), type(message)())
        if isinstance(parsed, pb.ListModelsResponse):  # health counters move between the calls
            assert [(m.name, m.status, m.sha256) for m in parsed.models] == \
                [(m.name, m.status, m.sha256) for m in message.models]
        elif isinstance(parsed, pb.ModelInfo):
            assert (parsed.name, parsed.kind, list(parsed.methods)) == (message.name, message.kind, list(message.methods))
        else:
            assert parsed == message, path
    names = [m["name"] for m in http.get("/v1/models").json()["models"]]
    assert {"shapes", "tabular", "broken"} <= set(names)


def test_an_unknown_model_is_404_with_the_grpc_message(gateway, stub):
    _, http = gateway
    error = grpc_error(lambda: stub.GetModel(pb.GetModelRequest(name="nope")))
    response = http.get("/v1/models/nope")
    assert response.status_code == 404
    assert response.json() == {"error": {"code": 404, "status": "NOT_FOUND", "message": error.details()}}


# KServe v1 explain ---------------------------------------------------------------------------

def test_kserve_instances_give_one_explanation_each_equal_to_grpc(gateway, stub):
    _, http = gateway
    images = [image("star_0.png"), image("circle_0.png")]
    response = http.post("/v1/models/shapes:explain", json={
        "instances": [{"b64": b64(data)} for data in images], "saliency": {}, "render": {"colormap": "VIRIDIS"}})
    assert response.status_code == 200, response.text
    explanations = response.json()["explanations"]
    assert len(explanations) == 2
    for data, explanation in zip(images, explanations):
        expected = stub.Explain(pb.ExplainRequest(model="shapes", image=data, saliency=pb.Saliency()))
        np.testing.assert_array_equal(attribution(explanation), from_proto(expected.attribution))
        assert explanation["topClasses"][0]["label"] == expected.top_classes[0].label
        assert base64.b64decode(explanation["heatmapPng"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert explanations[0]["topClasses"][0]["label"] != explanations[1]["topClasses"][0]["label"]


def test_kserve_tabular_rows_as_arrays_and_a_full_explain_request(gateway, stub):
    _, http = gateway
    expected = stub.Explain(pb.ExplainRequest(model="tabular", tensor=pb.Tensor(
        dtype=pb.FLOAT32, shape=[13], data=np.asarray(ROW, "<f4").tobytes()), tree_shap=pb.TreeShap()))
    kserve = http.post("/v1/models/tabular:explain", json={"instances": [ROW, ROW], "treeShap": {}})
    assert kserve.status_code == 200, kserve.text
    for explanation in kserve.json()["explanations"]:
        np.testing.assert_allclose(attribution(explanation), from_proto(expected.attribution), rtol=1e-6, atol=1e-7)
    row = pb.Tensor(dtype=pb.FLOAT32, shape=[13], data=np.asarray(ROW, "<f4").tobytes())
    full = http.post("/v1/models/tabular:explain",
                     json=json_format.MessageToDict(pb.ExplainRequest(tensor=row, tree_shap=pb.TreeShap())))
    assert full.status_code == 200, full.text
    np.testing.assert_allclose(attribution(full.json()), from_proto(expected.attribution), rtol=1e-6, atol=1e-7)


# Errors ---------------------------------------------------------------------------------------

def test_request_errors_have_the_grpc_code_mapped_and_the_same_message(gateway, stub):
    _, http = gateway
    cases = [  # (HTTP body, the same request over gRPC)
        ({"instances": [{"b64": b64(b"not an image")}], "saliency": {}},
         pb.ExplainRequest(model="shapes", image=b"not an image", saliency=pb.Saliency())),
        ({"instances": [{"b64": b64(image())}], "rise": {"numMasks": 10 ** 9}},
         pb.ExplainRequest(model="shapes", image=image(), rise=pb.Rise(num_masks=10 ** 9))),
        ({"instances": [{"b64": b64(image())}], "saliency": {}, "target": {"label": "dragon"}},
         pb.ExplainRequest(model="shapes", image=image(), saliency=pb.Saliency(), target=pb.Target(label="dragon"))),
    ]
    for body, request in cases:
        error = grpc_error(lambda: stub.Explain(request))
        response = http.post("/v1/models/shapes:explain", json=body)
        assert response.status_code == HTTP[error.code()], (response.text, error)
        assert response.json()["error"] == {"code": HTTP[error.code()], "status": error.code().name,
                                            "message": error.details()}
    broken = grpc_error(lambda: stub.Explain(pb.ExplainRequest(model="broken", image=image(), saliency=pb.Saliency())))
    response = http.post("/v1/models/broken:explain", json={"image": b64(image()), "saliency": {}})
    assert (response.status_code, response.json()["error"]["message"]) == (HTTP[broken.code()], broken.details())


def test_gateway_errors_name_the_field(gateway):
    _, http = gateway
    post = lambda body, **kw: http.post("/v1/models/tabular:explain", content=body, **kw)  # noqa: E731
    cases = {
        b"{": (400, "body: expected JSON"),
        b"[1, 2]": (400, "body: expected a JSON object (ExplainRequest), got an array"),
        b'{"nope": 1}': (400, 'has no field named "nope"'),
        b'{"model": "shapes", "treeShap": {}}': (400, "body.model: expected the path's model 'tabular' or unset"),
        b'{"instances": []}': (400, "instances: expected a non-empty array, got an empty array"),
        b'{"instances": [ROW, [3]], "treeShap": {}}'.replace(b"ROW", str(ROW).encode()): (400, "instances[1]: tensor.shape: expected [13]"),
        b'{"instances": [[[1], [2, 3]]]}': (400, "instances[0]: expected a rectangular nested array"),
        b'{"instances": [{"b64": "@@"}]}': (400, "instances[0].b64: expected base64"),
        b'{"instances": [1]}': (400, "instances[0]: expected an object"),
        b'{"instances": [[1],[1],[1],[1],[1]]}': (400, "instances: expected at most http_max_instances=4"),
        b'{"instances": [[1]], "image": "AAAA"}': (400, "body: expected the input in `instances` only"),
        b"{" + b" " * (1 << 20) + b"}": (413, "body: expected at most max_message_bytes=1048576 bytes"),
    }
    for body, (status, fragment) in cases.items():
        response = post(body)
        assert response.status_code == status, (body[:60], response.text)
        assert fragment in response.json()["error"]["message"], (body[:60], response.text)
    for header in ("soon", "0", "-1", "1e9", "nan"):
        response = post(b'{"instances": [[1]]}', headers={"x-timeout-s": header})
        assert response.status_code == 400 and "header x-timeout-s: expected seconds" in response.text, header
    assert http.get("/v1/nothing").status_code == 404
    assert http.get("/v1/models/tabular:explain").json()["error"]["status"] == "NOT_FOUND"
    assert http.delete("/v1/models").status_code == 405


def test_the_timeout_header_is_the_deadline_admission_judges_with_a_retry_hint(gateway):
    _, http = gateway
    x = {"tensor": {"dtype": "FLOAT32", "shape": ["3", "64", "64"],
                    "data": b64(np.random.default_rng(3).normal(size=(3, 64, 64)).astype("<f4").tobytes())}}
    warm = http.post("/v1/models/shapes:explain", json={**x, "rise": {"numMasks": 512}, "seed": "5"})
    assert warm.status_code == 200, warm.text  # the method's cost per row is measured
    # 50,000 masks cannot be done in 0.3 s, even alone: refused before any row runs (test_overload.py).
    late = http.post("/v1/models/shapes:explain", headers={"x-timeout-s": "0.3"},
                     json={**x, "rise": {"numMasks": 50000}, "seed": "5"})
    assert late.status_code == 429, late.text
    error = late.json()["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED" and "cannot finish this request before its deadline" in error["message"]
    ms = int(late.headers["retry-after-ms"])
    assert ms >= 1 and int(late.headers["retry-after"]) == -(-ms // 1000)  # whole seconds, rounded up


def test_a_client_that_leaves_cancels_its_call(gateway):
    srv, http = gateway
    cancelled = lambda: srv.log().count('"code": "CANCELLED"')  # noqa: E731
    before = cancelled()
    with pytest.raises(httpx.ReadTimeout):  # the unary call: the client gives up waiting
        http.post("/v1/models/shapes:explain", timeout=httpx.Timeout(10, read=0.5),
                  json={"instances": [{"b64": b64(image())}], "rise": {"numMasks": 90000}})
    assert wait_until(lambda: cancelled() > before, 30), srv.log()[-2000:]
    before = cancelled()
    with httpx.Client(base_url=http.base_url, timeout=30) as leaving:  # the stream: read one event, leave
        with leaving.stream("POST", "/v1/models/shapes:explainStream",
                            json={"image": b64(image()), "rise": {"numMasks": 90000}}) as response:
            assert next(response.iter_lines()).startswith("event: ")
    assert wait_until(lambda: cancelled() > before, 30), srv.log()[-2000:]


# Streams --------------------------------------------------------------------------------------

def test_explain_stream_sends_progress_partials_and_the_result_as_server_sent_events(gateway, stub):
    _, http = gateway
    request = pb.ExplainRequest(model="shapes", image=image(), rise=pb.Rise(num_masks=512), seed=7)
    with http.stream("POST", "/v1/models/shapes:explainStream",
                     json=json_format.MessageToDict(request)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        response.read()
    got = events(response)
    kinds = [kind for kind, _ in got]
    assert kinds[-1] == "result" and "progress" in kinds and "partial" in kinds
    fractions = [data["fraction"] for kind, data in got if kind == "progress"]
    assert fractions == sorted(fractions) and 0 < fractions[-1] <= 1
    assert all("complete" not in data for kind, data in got if kind == "partial")  # false: omitted in JSON
    expected = stub.Explain(request)
    np.testing.assert_allclose(attribution(got[-1][1]), from_proto(expected.attribution), rtol=1e-5, atol=1e-6)
    assert got[-1][1]["complete"] is True


def test_a_stream_refused_before_it_starts_is_an_http_error(gateway):
    _, http = gateway
    response = http.post("/v1/models/shapes:explainStream", json={"image": b64(b"junk"), "rise": {}})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("image: expected a decodable PNG or JPEG")


def test_evaluate_and_its_stream(gateway, stub):
    _, http = gateway
    request = pb.EvaluateRequest(explain=pb.ExplainRequest(model="shapes", image=image(), saliency=pb.Saliency()),
                                 metrics=[pb.Metric(deletion=pb.Deletion(steps=16))])
    expected = stub.Evaluate(request)
    body = json_format.MessageToDict(request)
    response = http.post("/v1/models/shapes:evaluate", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["metric"] == "deletion"
    assert response.json()["results"][0]["value"] == pytest.approx(expected.results[0].value, rel=1e-6)
    with http.stream("POST", "/v1/models/shapes:evaluateStream", json=body) as streamed:
        streamed.read()
    got = events(streamed)
    assert got[-1][0] == "result" and {kind for kind, _ in got[:-1]} <= {"progress"}
    assert got[-1][1]["results"][0]["value"] == pytest.approx(expected.results[0].value, rel=1e-6)


# OpenAPI and the page ------------------------------------------------------------------------

def test_openapi_document_is_derived_from_the_proto(gateway):
    _, http = gateway
    document = http.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert {"/v1/models", "/v1/models/{name}", "/v1/models/{name}:explain", "/v1/models/{name}:explainStream",
            "/v1/models/{name}:evaluate", "/v1/methods", "/v1/metrics"} <= set(document["paths"])
    schemas = document["components"]["schemas"]
    assert set(schemas["ExplainRequest"]["properties"]) == {f.json_name for f in pb.ExplainRequest.DESCRIPTOR.fields}
    assert schemas["Tensor"]["properties"]["data"] == {"type": "string", "format": "byte"}
    assert "instances" in schemas["KServeExplainRequest"]["required"]


def test_the_page_and_its_assets_are_served(gateway):
    _, http = gateway
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in page.text
        assert http.get(asset).status_code == 200


# Auth and TLS --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def secure_gateway(repository, pki, tmp_path_factory) -> Iterator[tuple[Server, str, Path]]:  # noqa: F811
    folder = tmp_path_factory.mktemp("secure-gateway")
    tokens = folder / "tokens.txt"
    tokens.write_text(f"alice {ALICE}\n")
    health, port = free_port(), free_port()
    srv = start_server(repository, folder / "server.log", probe=health_port_probe(health), health_port=health,
                       tls_cert=pki.path("server.pem"), tls_key=pki.path("server.key"), auth_tokens=tokens,
                       http_port=port)
    yield srv, f"https://127.0.0.1:{port}", pki.path("ca.pem")
    assert stop_server(srv) == 0, srv.log()


def test_the_gateway_speaks_tls_and_needs_the_bearer_token(secure_gateway):
    srv, url, ca = secure_gateway
    body = {"instances": [ROW], "treeShap": {}}
    with httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=str(ca)), timeout=60) as http:
        missing = http.post("/v1/models/tabular:explain", json=body)
        assert missing.status_code == 401
        assert missing.json()["error"]["message"] == "missing bearer token: send metadata 'authorization: Bearer TOKEN'"
        unknown = http.get("/v1/models", headers={"authorization": "Bearer not-a-token-000000"})
        assert unknown.status_code == 401 and unknown.json()["error"]["message"] == "unknown bearer token"
        bad_body = http.post("/v1/models/tabular:explain", content=b"{")
        assert bad_body.status_code == 401  # identity first: nothing is parsed for an unknown caller
        ok = http.post("/v1/models/tabular:explain", json=body, headers={"authorization": f"Bearer {ALICE}"})
        assert ok.status_code == 200, ok.text
        assert ok.json()["explanations"][0]["stats"]["tenant"] == "alice"
        assert http.get("/").status_code == 200  # the page itself is public; its calls carry the token
    with pytest.raises(httpx.HTTPError):  # plaintext to the TLS port
        httpx.get(url.replace("https", "http") + "/v1/models", timeout=10)
    with pytest.raises(httpx.ConnectError):  # a client that does not trust the server's CA
        httpx.get(url + "/v1/models", timeout=10)
