"""The gateway's pure parts: the status mapping, the OpenAPI document, KServe bodies."""

from __future__ import annotations

import base64

import grpc
import numpy as np
import pytest
from explaind_client.v1 import explaind_pb2 as pb

from explaind.api import gateway, openapi
from explaind.errors import InvalidArgument


def test_every_grpc_code_has_an_http_status_and_only_internal_ones_are_500():
    assert set(gateway.HTTP_STATUS) == set(grpc.StatusCode)
    assert {c for c, s in gateway.HTTP_STATUS.items() if s == 500} == {
        grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}


def _refs(node, found):
    if isinstance(node, dict):
        if "$ref" in node:
            found.add(node["$ref"].rsplit("/", 1)[-1])
        for value in node.values():
            _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)
    return found


def test_the_openapi_document_resolves_and_mirrors_the_messages():
    document = openapi.document()
    schemas = document["components"]["schemas"]
    assert _refs(document, set()) <= set(schemas)
    for message in (pb.ExplainRequest, pb.ExplainResponse, pb.ModelInfo, pb.EvaluateRequest, pb.Stats):
        schema = schemas[message.DESCRIPTOR.name]
        assert set(schema["properties"]) == {f.json_name for f in message.DESCRIPTOR.fields}
    assert schemas["Stats"]["properties"]["modelEvaluations"]["type"] == "string"  # int64: a string in JSON
    assert schemas["ExplainResponse"]["properties"]["figures"]["additionalProperties"]["oneOf"][0] == {"type": "number"}
    assert schemas["Score"]["enum"] == [v.name for v in pb.Score.DESCRIPTOR.values]
    for path, item in document["paths"].items():
        for operation in item.values():
            codes = set(operation["responses"])
            assert "200" in codes and "500" in codes, path


def test_kserve_instances_become_one_request_each():
    png = b"\x89PNG fake"
    requests = gateway.kserve_requests({"instances": [{"b64": base64.b64encode(png).decode()}, [[1, 2], [3, 4]],
                                                      {"image": base64.b64encode(b"x").decode()}],
                                        "rise": {"numMasks": 10}, "seed": "3"}, "shapes", 4)
    assert [r.WhichOneof("input") for r in requests] == ["image", "tensor", "image"]
    assert all(r.model == "shapes" and r.rise.num_masks == 10 and r.seed == 3 for r in requests)
    assert requests[0].image == png and requests[2].image == b"x"
    tensor = requests[1].tensor
    assert (tensor.dtype, list(tensor.shape)) == (pb.FLOAT32, [2, 2])
    np.testing.assert_array_equal(np.frombuffer(tensor.data, "<f4"), [1, 2, 3, 4])


@pytest.mark.parametrize("body, message", [
    ({"instances": "x"}, "instances: expected a non-empty array, got 'x'"),
    ({"instances": {}}, "instances: expected a non-empty array, got an object"),
    ({"instances": []}, "instances: expected a non-empty array, got an empty array"),
    ({"instances": [{"b64": 3}]}, "instances[0].b64: expected a base64 string, got a number"),
    ({"instances": [{"tensor": {}, "image": ""}]}, "instances[0]: expected {\"b64\": ...}"),
    ({"instances": [[1, "a"]]}, "instances[0]: expected a rectangular nested array of numbers"),
    ({"instances": [[]]}, "instances[0]: expected a non-empty array of numbers, got shape [0]"),
    ({"instances": [[1]], "model": "other"}, "body.model: expected the path's model 'shapes' or unset, got 'other'"),
    ({"instances": [[1]] * 5}, "instances: expected at most http_max_instances=4 instances, got 5"),
])
def test_bad_kserve_bodies_name_the_field(body, message):
    with pytest.raises(InvalidArgument) as info:
        gateway.kserve_requests(body, "shapes", 4)
    assert info.value.message.startswith(message), info.value.message
