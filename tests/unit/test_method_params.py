"""Each method's parameter declaration agrees with its proto message, and drives validation.

Tests shared across methods live here; each method's own tests are in tests/unit/methods/test_<method>.py.

The declaration (service/explaind/methods/*.py `params`) is the single source of each parameter's
type, default, bounds and description; the proto message is the wire contract. They must agree on
the names, on the types (proto3 scalars with presence, so an unset number is told apart from 0),
and on the defaults (each field's comment in proto/explaind/v1/explaind.proto states the default
the declaration uses).
"""

from __future__ import annotations

import numpy as np
import pytest
from explaind_client.v1 import explaind_pb2 as pb

from explaind.config import Settings
from explaind.errors import InvalidArgument
from explaind.methods.base import ModelView
from explaind.methods.input_x_gradient import InputXGradient
from explaind.methods.integrated_gradients import IntegratedGradients
from explaind.methods.params import Limits, parse_text, resolve_all
from explaind.methods.registry import all_methods
from explaind.methods.saliency import Saliency
from explaind.methods.smooth_grad import SmoothGrad
from explaind.models.white_box import WhiteBox
from explaind.onnxgraph.signature import ModelSignature

from _linear import served_linear, settings
from _proto_declarations import check_declaration

METHODS = all_methods()



def method_message(name: str):
    return pb.ExplainRequest.DESCRIPTOR.fields_by_name[name].message_type


@pytest.mark.parametrize("name", sorted(METHODS))
def test_declaration_matches_the_proto_message(name):
    method = METHODS[name]
    message = method_message(name)
    check_declaration(name, method.params, message)


def test_every_method_message_is_a_method():
    oneof = pb.ExplainRequest.DESCRIPTOR.oneofs_by_name["method"]
    assert {f.name for f in oneof.fields} == set(METHODS)


IMAGE = ModelView("image", ModelSignature("input", "logits", (3, 32, 32), "NCHW", "logits"))
TABULAR = ModelView("tabular", ModelSignature("input", "logits", (5,), "tabular", "logits"), np.zeros((4, 5)))
LIMITS = Limits(IMAGE, Settings())


def test_validation_names_the_field_what_was_expected_and_what_came():
    rise = METHODS["rise"].params
    with pytest.raises(InvalidArgument, match=r"rise\.keep_probability: expected a number in \(0, 1\), got 1\.5"):
        resolve_all("rise", rise, {"keep_probability": 1.5}, LIMITS)
    with pytest.raises(InvalidArgument, match=r"rise\.grid_size: expected an integer in \[1, 32\], got 33"):
        resolve_all("rise", rise, {"grid_size": 33}, LIMITS)  # the model's side bounds it
    with pytest.raises(InvalidArgument, match=r"rise\.baseline: expected a finite number, got nan"):
        resolve_all("rise", rise, {"baseline": float("nan")}, LIMITS)
    lime = METHODS["lime"].params
    with pytest.raises(InvalidArgument, match=r"lime\.segmentation: expected one of quickshift, slic, felzenszwalb"):
        resolve_all("lime", lime, {"segmentation": "watershed"}, LIMITS)
    occlusion = METHODS["occlusion"].params
    with pytest.raises(InvalidArgument, match=r"occlusion\.window: expected 1 to 2 values, got 3 values"):
        resolve_all("occlusion", occlusion, {"window": [1, 2, 3]}, LIMITS)


def test_defaults_fill_in_and_kinds_are_respected():
    rise = resolve_all("rise", METHODS["rise"].params, {}, LIMITS)
    assert rise == {"num_masks": 4000, "grid_size": 7, "keep_probability": 0.5, "baseline": 0.0}
    lime_image = resolve_all("lime", METHODS["lime"].params, {}, LIMITS)
    lime_tabular = resolve_all("lime", METHODS["lime"].params, {}, Limits(TABULAR, Settings()))
    assert lime_image["num_samples"] == 1000 and lime_image["segmentation"] == "quickshift"
    assert lime_tabular == {"num_samples": 5000}  # image-only parameters do not apply
    with pytest.raises(InvalidArgument, match=r"lime\.segmentation: expected unset for a tabular model"):
        resolve_all("lime", METHODS["lime"].params, {"segmentation": "slic"}, Limits(TABULAR, Settings()))
    # A neutral value of an image-only parameter is accepted on a tabular model (channel_reduction none).
    assert resolve_all("saliency", METHODS["saliency"].params, {"channel_reduction": "none"},
                       Limits(TABULAR, Settings())) == {"postprocess": "absolute"}


@pytest.mark.parametrize("method, name, text, value", [
    ("rise", "num_masks", "2000", 2000), ("rise", "keep_probability", "0.25", 0.25),
    ("occlusion", "window", "8,4", [8, 4]), ("extremal_perturbation", "areas", "0.05,0.1", [0.05, 0.1]),
    ("lime", "segmentation", "slic", "slic"), ("extremal_perturbation", "jitter", "false", False),
    ("grad_cam", "relu", "true", True),
])
def test_cli_text_takes_the_declared_type(method, name, text, value):
    p = next(p for p in METHODS[method].params if p.name == name)
    parsed = parse_text(p, text)
    assert parsed == value and type(parsed) is type(value)


def test_cli_refuses_text_of_the_wrong_type():
    p = next(p for p in METHODS["rise"].params if p.name == "num_masks")
    with pytest.raises(ValueError, match="num_masks: expected int32, got '2k'"):
        parse_text(p, "2k")
    jitter = next(p for p in METHODS["extremal_perturbation"].params if p.name == "jitter")
    with pytest.raises(ValueError, match=r"jitter: expected bool \(true or false\), got 'maybe'"):
        parse_text(jitter, "maybe")


@pytest.mark.parametrize("method", [Saliency(), InputXGradient(), SmoothGrad(), IntegratedGradients()],
                         ids=lambda m: m.name)
def test_gradient_methods_refuse_a_channel_reduction_on_a_tabular_model(method):
    served, _ = served_linear("tab", (6,), 3, layout="tabular")
    view = ModelView("tabular", served.signature, None, WhiteBox(True))
    with pytest.raises(InvalidArgument) as err:
        method.parameters({"channel_reduction": "max"}, view, settings(), "logit")
    assert err.value.field == f"{method.name}.channel_reduction" and "tabular" in err.value.message
    # Unset or "none" is fine; the parameters as used leave out what does not apply to the model.
    assert "channel_reduction" not in method.parameters({}, view, settings(), "logit")
    assert "channel_reduction" not in method.parameters({"channel_reduction": "NONE"}, view, settings(), "logit")
