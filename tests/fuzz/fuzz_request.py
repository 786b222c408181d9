"""atheris target: explaind's request path, coverage-guided, for runs longer than CI's hypothesis test.

A real server (explaind.api.server.start: the gRPC server, the engine, onnxruntime, the demo models
and a broken one) runs in a background thread of this process, so atheris sees the coverage of the
server's own code; every input is sent to it over loopback gRPC. Each input is either raw bytes for
one RPC, or an ExplainRequest assembled from the input (model, tensor or image, target, score, one
method with its fields set from the input). Any answer UNKNOWN or INTERNAL, a status message over
1,500 characters or one with a traceback, a source path or an object repr, or a server that stops
answering health checks, is a crash: atheris saves the input (crash-*), which replays with
`python tests/fuzz/fuzz_request.py crash-...`. Not collected by pytest (no test_ prefix).

    pip install atheris
    PYTHONPATH=service:clients/python python tests/fuzz/fuzz_request.py -max_total_time=600 -rss_limit_mb=8192 \
        /tmp/explaind-corpus

See docs/fuzzing.md.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["explaind", "explaind_client"]):
    import grpc
    import numpy as np
    from google.protobuf.descriptor import FieldDescriptor

    from explaind.api.server import start
    from explaind.config import Settings
    from explaind_client.v1 import explaind_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["Explainer"]
METHODS = [f.name for f in pb.ExplainRequest.DESCRIPTOR.oneofs_by_name["method"].fields]
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
LEAKS = re.compile(r"Traceback|onnxruntime_src|\.(?:cc|cpp|h|py):\d+|object at 0x|np\.(?:float|int)\d+\(|<class ")
FIELD_FIRST = re.compile(r"^[a-z_][a-z_0-9]*(?:\.[a-z_0-9]+)*(?:\[\d+\])?: expected .+, got .+", re.DOTALL)
SHAPES = {"shapes": [3, 64, 64], "tabular": [13]}
TIMEOUT_S = 10.0


def start_server() -> str:
    """The server in a daemon thread with its own event loop; returns its address."""
    demo = Path(__file__).resolve().parents[2] / "service" / "explaind" / "demo" / "repository"
    repository = Path(tempfile.mkdtemp(prefix="explaind-fuzz-")) / "models"
    shutil.copytree(demo, repository)
    (repository / "broken").mkdir()
    (repository / "broken" / "model.onnx").write_bytes(b"not a model")
    (repository / "broken" / "model.yaml").write_text("kind: image\n")
    settings = Settings(host="127.0.0.1", port=0, metrics_port=-1, repository=str(repository), intra_op_threads=2,
                        max_rows_per_request=3000, max_num_masks=1000, max_request_memory_bytes=64 << 20,
                        max_message_bytes=4 << 20)
    logging.basicConfig(level=logging.ERROR)
    ready: dict[str, object] = {}
    started = threading.Event()

    def run() -> None:
        loop = asyncio.new_event_loop()
        ready["server"] = loop.run_until_complete(start(settings))
        started.set()
        loop.run_forever()

    threading.Thread(target=run, name="explaind-server", daemon=True).start()
    started.wait(120)
    return f"127.0.0.1:{ready['server'].port}"  # type: ignore[attr-defined]


CHANNEL = grpc.insecure_channel(start_server())


def fill(data: atheris.FuzzedDataProvider, message: object) -> None:
    for field in message.DESCRIPTOR.fields:  # type: ignore[attr-defined]
        if not data.ConsumeBool():
            continue
        kind = field.type
        if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
            value = data.ConsumeRegularFloat() if data.ConsumeBool() else data.ConsumeFloatInRange(-2.0, 50.0)
        elif kind == FieldDescriptor.TYPE_BOOL:
            value = data.ConsumeBool()
        elif kind == FieldDescriptor.TYPE_STRING:
            value = data.ConsumeUnicodeNoSurrogates(data.ConsumeIntInRange(0, 40))
        elif kind == FieldDescriptor.TYPE_ENUM:
            value = data.ConsumeIntInRange(0, 8)
        elif kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64):
            value = data.ConsumeIntInRange(0, 2**31 - 1) if data.ConsumeBool() else data.ConsumeIntInRange(0, 64)
        elif kind in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT32,
                      FieldDescriptor.TYPE_SINT64):
            value = data.ConsumeIntInRange(-2**31, 2**31 - 1) if data.ConsumeBool() else data.ConsumeIntInRange(-3, 64)
        else:
            continue
        if field.is_repeated:
            getattr(message, field.name).extend([value] * data.ConsumeIntInRange(0, 3))
        else:
            try:
                setattr(message, field.name, value)
            except (ValueError, TypeError):  # e.g. a float32 out of range: not the server's concern
                pass


def structured(data: atheris.FuzzedDataProvider) -> bytes:
    request = pb.ExplainRequest(model=data.PickValueInList(["shapes", "tabular", "shapes", "broken", "nope"]))
    kind = data.ConsumeIntInRange(0, 3)
    if kind == 0:  # the model's example shape, float32
        shape = SHAPES.get(request.model, [13])
        size = int(np.prod(shape))
        values = np.frombuffer(data.ConsumeBytes(size * 4).ljust(size * 4, b"\0"), "<f4").reshape(shape)
        request.tensor.CopyFrom(pb.Tensor(dtype=pb.FLOAT32, shape=shape, data=values.tobytes()))
    elif kind == 1:  # any dtype and shape
        shape = [data.ConsumeIntInRange(-2, 70) for _ in range(data.ConsumeIntInRange(0, 5))]
        request.tensor.CopyFrom(pb.Tensor(dtype=data.ConsumeIntInRange(0, 12), shape=shape,
                                          data=data.ConsumeBytes(data.ConsumeIntInRange(0, 256))))
    elif kind == 2:
        request.image = data.ConsumeBytes(data.ConsumeIntInRange(0, 4096))
    if data.ConsumeBool():
        request.target.class_index = data.ConsumeIntInRange(-3, 20)
    request.score = data.ConsumeIntInRange(0, 3)
    request.allow_partial = data.ConsumeBool()
    method = data.PickValueInList(METHODS)
    getattr(request, method).SetInParent()
    fill(data, getattr(request, method))
    if data.ConsumeBool():
        request.render.SetInParent()
        fill(data, request.render)
    return request.SerializeToString()


def call(method_name: str, payload: bytes) -> tuple[grpc.StatusCode, str]:
    method = SERVICE.methods_by_name[method_name]
    path = f"/{SERVICE.full_name}/{method.name}"
    try:
        if method.server_streaming:
            list(CHANNEL.unary_stream(path, request_serializer=None, response_deserializer=None)(payload,
                                                                                              timeout=TIMEOUT_S))
        else:
            CHANNEL.unary_unary(path, request_serializer=None, response_deserializer=None)(payload, timeout=TIMEOUT_S)
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


def TestOneInput(raw: bytes) -> None:  # noqa: N802 (atheris' name)
    data = atheris.FuzzedDataProvider(raw)
    if data.ConsumeBool():
        rpc = data.PickValueInList(["Explain", "ExplainStream"])
        payload = structured(data)
    else:  # raw bytes; model control only gets them when the servicer implements it
        rpc = data.PickValueInList(["Explain", "ExplainStream", "ListModels", "GetModel", "ListMethods"])
        payload = data.ConsumeBytes(data.remaining_bytes())
    code, message = call(rpc, payload)
    if code in FORBIDDEN or code == grpc.StatusCode.DEADLINE_EXCEEDED and rpc.startswith("List"):
        raise AssertionError(f"{rpc} answered {code.name}: {message}")
    if code != grpc.StatusCode.OK:
        if len(message) > 1500 or LEAKS.search(message):
            raise AssertionError(f"{rpc} {code.name} message leaks or is too long: {message[:2000]}")
        if code == grpc.StatusCode.INVALID_ARGUMENT and not FIELD_FIRST.match(message):
            raise AssertionError(f"{rpc} INVALID_ARGUMENT names no field: {message}")


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
