"""Each metric's parameter declaration against its proto message (names, types, defaults, choices),
the Metric oneof against the registry, and ListMetrics' conversion."""

from __future__ import annotations

import pytest
from explaind_client.v1 import explaind_pb2 as pb

from explaind.api.convert import metric_info
from explaind.evaluation.registry import all_metrics

from _proto_declarations import check_declaration

METRICS = all_metrics()


@pytest.mark.parametrize("name", sorted(METRICS))
def test_declaration_matches_the_proto_message(name):
    message = pb.Metric.DESCRIPTOR.fields_by_name[name].message_type
    check_declaration(name, METRICS[name].params, message)


def test_every_metric_message_is_a_metric():
    assert set(pb.Metric.DESCRIPTOR.fields_by_name) == set(METRICS)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_every_metric_documents_itself(name):
    metric = METRICS[name]
    info = metric_info(metric)
    assert info.name == name and info.title and info.reference and info.description
    assert info.category in ("faithfulness", "robustness", "localisation", "randomisation", "complexity", "axiomatic")
    assert [p.name for p in info.parameters] == [p.name for p in metric.params]
    doc = __import__(type(metric).__module__, fromlist=["_"]).__doc__
    assert doc and len(doc.split()) > 30, f"{name}: its module docstring gives the definition and defaults"
