"""The pieces that answer failures right (issue 12 item 5), without a server: onnxruntime's run-time
errors mapped and stripped of source paths, per-model health, the burst log, the tolerant request
deserializer for every RPC, YAML refused cheaply, echoed values cut, image headers read, tensor
shapes checked."""

from __future__ import annotations

import io
import logging
import struct
import zlib

import grpc
import numpy as np
import pytest
from PIL import Image

from explaind.api.decoding import SERVICE, Undecodable, method_handlers, tolerant_deserializer
from explaind.engine.health import ModelHealth
from explaind.engine.runner import run_error, strip_source_paths
from explaind.errors import ExplaindBug, InvalidArgument, ModelConfigError, ModelRunError, ResourceExhausted, echo
from explaind.logs import BurstLog
from explaind.metrics import Metrics
from explaind.models.config import safe_yaml_load
from explaind.models.inputs import declared_size, decode_image
from explaind_client.tensors import from_proto
from explaind_client.v1 import explaind_pb2 as pb
from explaind_client.v1 import explaind_pb2_grpc as pb_grpc

# onnxruntime's run-time errors ----------------------------------------------------------------------

ALLOCATION = [
    "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running ConstantOfShape node. "
    "Name:'hungry' Status Message: /onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:360 void* "
    "onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, onnxruntime::Stream*) Failed to allocate memory "
    "for requested buffer of size 4398046511104\n",
    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running TfIdfVectorizer node. "
    "Name:'TfIdfVectorizer' Status Message: /Users/runner/work/1/s/onnxruntime/core/framework/bfc_arena.cc:376 void "
    "*onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, onnxruntime::Stream *, bool, "
    "onnxruntime::WaitNotificationFn) Available memory of 0 is smaller than requested bytes of 2048",
    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Exception during initialization: std::bad_alloc",
    "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Conv node. Name:'conv1' Status "
    "Message: D:\\a\\_work\\1\\s\\onnxruntime\\core\\providers\\cuda\\cuda_call.cc:123 onnxruntime::CudaCall "
    "CUDA failure 2: out of memory ; GPU=0 ; hostname=x ; expr=cudaMalloc(&p, size);",
]


@pytest.mark.parametrize("message", ALLOCATION)
def test_allocation_failures_are_resource_exhausted_without_source_paths(message):
    error = run_error(RuntimeError(message), "m", "predict", 1 << 30)
    assert isinstance(error, ResourceExhausted)
    assert error.message.startswith("model 'm' (predict graph) needed more memory than it could get at run time (")
    assert "max_session_memory_bytes is 1073741824 bytes (1024 MiB)" in error.message
    assert "onnxruntime_src" not in error.message and ".cc:" not in error.message and "\\" not in error.message
    assert "[ONNXRuntimeError]" not in error.message and "AllocateRawInternal" not in error.message


def test_memory_error_is_resource_exhausted_and_says_when_there_is_no_cap():
    error = run_error(MemoryError(), "m", "rise")
    assert isinstance(error, ResourceExhausted) and "no max_session_memory_bytes cap is set" in error.message


def test_other_run_failures_are_model_run_errors_naming_the_node():
    message = ("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Non-zero status code returned while running Reshape "
               "node. Name:'/model/Reshape' Status Message: /onnxruntime_src/onnxruntime/core/providers/cpu/tensor/"
               "reshape_helper.h:47 onnxruntime::ReshapeHelper::ReshapeHelper(const onnxruntime::TensorShape&, "
               "onnxruntime::TensorShapeVector&, bool) input_shape_size == size was false. The input tensor cannot "
               "be reshaped to the requested shape. Input shape:{3,4}, requested shape:{5}\nStacktrace:\n#0 ...")
    error = run_error(RuntimeError(message), "m", "occlusion_image")
    assert isinstance(error, ModelRunError) and error.code == grpc.StatusCode.INTERNAL
    assert error.message == (
        "model 'm' (occlusion_image graph) failed at run time in onnxruntime (Reshape node '/model/Reshape': "
        "input_shape_size == size was false. The input tensor cannot be reshaped to the requested shape. Input "
        "shape:{3,4}, requested shape:{5}); the model's own node failed: this is a fault of the model on this "
        "input, not a bug of explaind")


def test_a_failure_in_a_node_explaind_added_is_explaind_bug_not_the_model_s():
    message = ("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Non-zero status code returned while running Gather "
               "node. Name:'explaind::deletion/Gather_3' Status Message: indices element out of data bounds, "
               "idx=9 must be within the inclusive range [-4,3]")
    error = run_error(RuntimeError(message), "m", "deletion")
    assert isinstance(error, ExplaindBug) and error.code == grpc.StatusCode.INTERNAL
    assert error.message == (
        "explaind's deletion graph of model 'm' failed at run time in onnxruntime (Gather node "
        "'explaind::deletion/Gather_3': indices element out of data bounds, idx=9 must be within the inclusive "
        "range [-4,3]): a node explaind added to the model's graph failed, so this is a bug of explaind, not a "
        "fault of the model; please report it with the model and the request")
    # A model node without a name is still the model's.
    unnamed = message.replace("Name:'explaind::deletion/Gather_3'", "Name:''")
    assert isinstance(run_error(RuntimeError(unnamed), "m", "deletion"), ModelRunError)


def one_node_graph(node_name: str, shape: list[int]) -> bytes:
    """explaind::x [N, 3] -> Reshape(shape) named node_name -> explaind::y."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["explaind::x", "shape"], ["explaind::y"], name=node_name)], "g",
        [helper.make_tensor_value_info("explaind::x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("explaind::y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(shape, np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize("node_name, feed_shape, fault", [
    ("explaind::occlusion/Reshape_0", (2, 3), "explaind"),   # explaind's own node
    ("model_reshape", (2, 3), "model"),                       # the user's model's node
    ("model_reshape", (2, 5), "explaind"),                    # explaind's feed of the wrong shape: no node named
])
def test_real_onnxruntime_failures_blame_whoever_built_the_failing_part(node_name, feed_shape, fault):
    from explaind.config import Settings
    from explaind.engine.runner import Device, Runner

    health = ModelHealth()
    runner = Runner(one_node_graph(node_name, [7]), ("y",), (), Device("cpu", None), Settings(intra_op_threads=1),
                    model="m", variant="occlusion_image", health=health)  # type: ignore[arg-type]
    with pytest.raises((ExplaindBug, ModelRunError)) as raised:
        runner.run({"x": np.zeros(feed_shape, np.float32)}, ())
    error = raised.value
    assert error.code == grpc.StatusCode.INTERNAL and "onnxruntime_src" not in error.message
    if fault == "explaind":
        assert isinstance(error, ExplaindBug) and "this is a bug of explaind, not a fault of the model" in error.message
        assert health.of("m").run_failures == 0  # the model's health does not pay for explaind's bug
    else:
        assert isinstance(error, ModelRunError) and "Reshape node 'model_reshape'" in error.message
        assert "fault of the model" in error.message and health.of("m").run_failures == 1


def test_source_paths_are_stripped_but_the_message_kept():
    assert strip_source_paths("x /onnxruntime_src/a/b.cc:12 plain words: a::b(c) stay") == \
        "x plain words: a::b(c) stay"
    assert strip_source_paths("/src/k.h:9 onnxruntime::common::Status onnxruntime::K<T>::Compute("
                              "onnxruntime::OpKernelContext*) const bad input") == "bad input"
    assert strip_source_paths("nothing to strip (1, 2)") == "nothing to strip (1, 2)"


# Health -----------------------------------------------------------------------------------------

def test_a_model_is_unhealthy_after_three_failures_in_a_row_and_recovers_after_three_successes():
    health = ModelHealth()
    assert health.of("m").healthy and health.of("m").run_failures == 0
    health.failed("m", "one")
    health.failed("m", "two")
    health.succeeded("m")  # interrupts the run of failures
    health.failed("m", "three")
    health.failed("m", "four")
    assert health.of("m").healthy
    health.failed("m", "five")
    view = health.of("m")
    assert not view.healthy and view.run_failures == 5
    assert "5 failed since it was loaded" in view.reason and view.reason.endswith(": five")
    health.succeeded("m")
    health.succeeded("m")
    assert not health.of("m").healthy
    health.succeeded("m")
    assert health.of("m").healthy and health.of("m").reason == "" and health.of("m").run_failures == 5
    assert health.of("other").healthy
    health.forget("m")
    assert health.of("m").run_failures == 0


# The burst log ----------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_burst_log_writes_one_line_per_interval_with_the_count_it_held_back(caplog):
    clock = Clock()
    burst = BurstLog(logging.getLogger("burst-test"), 10.0, clock)
    with caplog.at_level(logging.WARNING, logger="burst-test"):
        logged = [burst.event("bad", n=i) for i in range(500)]
        clock.now += 10.0
        logged.append(burst.event("bad", n=500))
    assert logged.count(True) == 2 and logged[0] and logged[-1]
    assert [(r.n, r.suppressed) for r in caplog.records] == [(0, 0), (500, 499)]


# The tolerant deserializer ----------------------------------------------------------------------

def test_every_rpc_of_the_service_decodes_tolerantly():
    handlers = method_handlers(pb_grpc.ExplainerServicer(), Metrics())
    assert set(handlers) == {m.name for m in SERVICE.methods}
    assert {"LoadModel", "UnloadModel", "Explain", "ExplainStream"} <= set(handlers)
    for method in SERVICE.methods:
        decode = handlers[method.name].request_deserializer
        bad = decode(b"\xff\xff\xff")
        assert isinstance(bad, Undecodable) and bad.rpc == method.name and bad.size == 3
        assert handlers[method.name].response_streaming == method.server_streaming
    good = pb.ExplainRequest(model="shapes", seed=3)
    assert tolerant_deserializer(SERVICE.methods_by_name["Explain"])(good.SerializeToString()) == good


def test_an_undecodable_request_is_refused_naming_the_type():
    bad = tolerant_deserializer(SERVICE.methods_by_name["GetModel"])(b"\x0a\x05ab")
    error = bad.error_for_caller()
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.message.startswith("request: expected a valid explaind.v1.GetModelRequest protobuf message, "
                                    "got 4 bytes that do not parse (")
    assert "Error parsing message with type" not in error.message


# YAML -------------------------------------------------------------------------------------------

def bomb(levels: int) -> str:
    items = ['    - &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    items += [f"    - &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "kind: image\nlabels:\n  -\n" + "\n".join(items) + "\n"


def test_an_alias_bomb_is_refused_at_its_first_anchor():
    text = bomb(7)
    assert len(text) < 500
    with pytest.raises(ModelConfigError) as err:
        safe_yaml_load(text, "model.yaml")
    assert str(err.value) == ("model.yaml uses YAML anchors or aliases (& and *) (line 4, column 7); they are not "
                              "allowed: write every value out")


@pytest.mark.parametrize("text", ["a: &x 1\n", "a: 1\nb: *x\n", "a: &x\n  b: 1\n"])
def test_any_anchor_or_alias_is_refused(text):
    with pytest.raises(ModelConfigError, match="anchors or aliases|not valid YAML"):
        safe_yaml_load(text, "model.yaml")


def test_a_document_over_the_node_budget_is_refused():
    text = "labels: [" + ", ".join(f"l{i}" for i in range(20_000)) + "]\n"
    with pytest.raises(ModelConfigError, match=r"model.yaml has more than 10000 YAML nodes .* labels_file"):
        safe_yaml_load(text, "model.yaml")
    assert len(safe_yaml_load(text, "model.yaml", max_nodes=30_000)["labels"]) == 20_000


def test_plain_yaml_loads_and_tags_stay_refused():
    assert safe_yaml_load("kind: image\nlabels: [a, 'b']\n", "x.yaml") == {"kind": "image", "labels": ["a", "b"]}
    with pytest.raises(ModelConfigError, match="x.yaml is not valid YAML: could not determine a constructor"):
        safe_yaml_load("a: !!python/object/apply:os.system [ls]\n", "x.yaml")


# Echoed values ----------------------------------------------------------------------------------

def test_echo_cuts_strings_to_100_characters_and_says_their_length():
    assert echo("a" * 16384) == "'" + "a" * 100 + "...' (16384 characters)"
    assert echo("short") == "'short'"
    assert echo("a\nb") == "'a\\nb'"  # no raw control characters in a status message
    assert echo(np.float32(0.5)) == "0.5" and echo(np.int64(7)) == "7"  # never np.float32(0.5)
    assert echo(list(range(50))) == "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ...] (50 values)"
    assert echo(b"\x00" * 9) == "9 bytes"
    assert echo((3, 4)) == "[3, 4]"


def test_invalid_argument_cuts_long_descriptions_and_echoes_values():
    error = InvalidArgument("f", "something", "x" * 5000)
    assert len(error.message) < 400 and error.message.endswith("... (5000 characters)")
    assert InvalidArgument("f", "a string", "z" * 200).message.count("z") == 200  # a description is kept to 300
    assert InvalidArgument("f", "a number", np.float64(2.5)).message == "f: expected a number, got 2.5"


# Image headers ----------------------------------------------------------------------------------

def png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))


def encoded(fmt: str, size: tuple[int, int], **options) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_declared_sizes_are_read_from_the_headers():
    assert declared_size(png_header(20000, 20000)) == ("PNG", 20000, 20000)
    assert declared_size(encoded("PNG", (30, 20))) == ("PNG", 30, 20)
    assert declared_size(encoded("JPEG", (30, 20))) == ("JPEG", 30, 20)
    assert declared_size(encoded("JPEG", (31, 17), progressive=True)) == ("JPEG", 31, 17)
    assert declared_size(b"\x89PNG\r\n\x1a\n") is None  # truncated: Pillow says what is wrong
    assert declared_size(b"\xff\xd8\xff\xe0\x00") is None
    assert declared_size(b"GIF89a") is None


def test_an_image_over_the_pixel_limit_is_refused_before_pillow_opens_it():
    with pytest.raises(InvalidArgument) as err:
        decode_image(png_header(20000, 20000), 1 << 20, 4096 * 4096, 3)
    assert err.value.message == ("image: expected at most 16777216 pixels (the server's max_image_pixels), got "
                                 "20000x20000 = 400000000 pixels (declared in its PNG header)")
    assert decode_image(encoded("PNG", (30, 20)), 1 << 20, 600, 3).shape == (20, 30, 3)


# Tensor shapes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, message", [
    ([1] * 100_003, "tensor.shape: expected at most 32 dimensions, got 100003 dimensions"),
    ([1 << 40, 1 << 40], "tensor.shape: expected a shape whose element count fits in int64, got "
                         "[1099511627776, 1099511627776] (1208925819614629174706176 elements)"),
    ([3, -1, 4], "tensor.shape: expected non-negative dimensions, got [3, -1, 4] (dimension 1 is -1)"),
    ([2, 2], "tensor.data: expected 16 bytes for shape [2, 2] of FLOAT32, got 0 bytes"),
])
def test_tensor_shapes_are_checked_before_any_size_is_computed(shape, message):
    with pytest.raises(ValueError) as err:
        from_proto(pb.Tensor(dtype=pb.FLOAT32, shape=shape))
    assert str(err.value) == message

