"""The gateway fuzzed by schemathesis against its own OpenAPI document (GET /openapi.json).

Every operation gets bounded examples (EXAMPLES each, positive and negative data); each answer must
conform to the document (status documented, content type, JSON body against its schema) and no
answer may be 500 (INTERNAL: a bug). The server's limits keep any generated request small."""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from _server import free_port, start_server, stop_server

EXAMPLES = 25
MODELS = ["shapes", "tabular", "broken", "nope"]  # mostly served models, so that requests reach them


def on_model(drawn):
    """The case with a model of the repository in its path, and none in its body (a body naming
    another model than the path's is refused before anything else)."""
    case, model = drawn
    if "name" in (case.path_parameters or {}):
        case.path_parameters["name"] = model
        body = case.body if isinstance(case.body, dict) else {}
        body.pop("model", None)
        if isinstance(body.get("explain"), dict):
            body["explain"].pop("model", None)
    return case


@pytest.fixture(scope="module")
def gateway_schema(repository, tmp_path_factory):
    port = free_port()
    srv = start_server(repository, tmp_path_factory.mktemp("gateway-fuzz") / "server.log", http_port=port,
                       max_rows_per_request=3000, max_num_masks=1000, max_message_bytes=1 << 20)
    yield schemathesis.openapi.from_url(f"http://127.0.0.1:{port}/openapi.json")
    assert stop_server(srv) == 0, srv.log()
    assert "internal error" not in srv.log()


def _operations(schema) -> list:
    operations = []
    for result in schema.get_all_operations():
        operations.append(result.ok())
    return operations


# schemathesis's pytest integration (from_fixture) does not run under pytest 9 (it reads
# request.node._nodeid), so each operation's strategy is driven by hypothesis here.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_gateway_answers_as_its_openapi_document_says(gateway_schema, mode):
    operations = _operations(gateway_schema)
    assert len(operations) == 8
    statuses: Counter[tuple[str, int]] = Counter()
    for operation in operations:
        @given(case=st.tuples(operation.as_strategy(generation_mode=mode), st.sampled_from(MODELS)).map(on_model))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def answers_as_documented(case) -> None:
            response = case.call(timeout=60)
            statuses[(f"{case.method} {operation.path}", response.status_code)] += 1
            assert response.status_code != 500, (case.method, case.formatted_path, response.text[:500])
            case.validate_response(response, checks=[status_code_conformance, content_type_conformance,
                                                     response_schema_conformance])
        try:
            answers_as_documented()
        except Unsatisfiable:  # a GET's inputs are any strings: none can be made invalid
            assert mode is GenerationMode.NEGATIVE and operation.method == "get", operation.path
    print(sorted(statuses.items()))  # -s shows how the answers spread
    explains = sum(n for (op, status), n in statuses.items() if op.startswith("POST"))
    assert explains >= 4 * EXAMPLES // 2  # the POST operations were exercised, not only filtered out
