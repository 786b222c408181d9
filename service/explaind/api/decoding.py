"""Registering the Explainer service with a deserializer that never raises.

grpc's generated registration decodes each request with ``Message.FromString``; when the bytes do
not parse, grpc.aio logs the exception with its traceback and answers UNKNOWN. Here every RPC of the
service (taken from the service descriptor, so RPCs added to the proto are covered without editing
this file) decodes through :func:`tolerant_deserializer`, which turns bytes that do not parse into
an :class:`Undecodable` value. The handler answers that with INVALID_ARGUMENT naming the request
type, counts it in ``explaind_undecodable_requests_total{rpc}`` and logs it through a
:class:`BurstLog` (one line per burst, with the count of the lines it held back), so a flood of
garbage costs neither a traceback per message nor the log's disk.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

import grpc
from explaind_client.v1 import explaind_pb2 as pb
from google.protobuf import message as protobuf_message
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from ..errors import ExplaindError, InvalidArgument
from ..logs import BurstLog
from ..metrics import Metrics

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["Explainer"]


@dataclass(frozen=True)
class Undecodable:
    """What a request deserializer returns for bytes that are not a message of its type."""

    rpc: str
    type_name: str
    size: int
    error: str

    def error_for_caller(self) -> InvalidArgument:
        # protobuf says "Error parsing message with type 'T': why"; T is named already.
        detail = " ".join(self.error.split()).removeprefix(f"Error parsing message with type '{self.type_name}': ")
        detail = detail[:200] or "no detail"
        return InvalidArgument("request", f"a valid {self.type_name} protobuf message",
                               f"{self.size} bytes that do not parse ({detail})")


def tolerant_deserializer(method: MethodDescriptor) -> Callable[[bytes], Any]:
    """``FromString`` of the method's request type, returning :class:`Undecodable` instead of raising."""
    message_class = message_factory.GetMessageClass(method.input_type)
    type_name = method.input_type.full_name

    def deserialize(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except (protobuf_message.DecodeError, RuntimeError, ValueError) as exc:
            return Undecodable(method.name, type_name, len(data), str(exc))

    return deserialize


class UndecodableRequests:
    """Answers, counts and logs requests that did not decode."""

    def __init__(self, metrics: Metrics, burst_log: BurstLog | None = None) -> None:
        self._metrics = metrics
        self._log = burst_log or BurstLog(log)

    async def refuse(self, request: Undecodable, context: grpc.aio.ServicerContext,
                     identify: Callable[[grpc.aio.ServicerContext], str] | None) -> None:
        if identify is not None:  # an unauthenticated caller learns nothing more than UNAUTHENTICATED
            try:
                identify(context)
            except ExplaindError as exc:
                await context.abort(exc.code, exc.message)
        self._metrics.undecodable_requests.labels(request.rpc).inc()
        self._log.event("undecodable request", rpc=request.rpc, bytes=request.size,
                        error=" ".join(request.error.split())[:200], peer=context.peer())
        error = request.error_for_caller()
        await context.abort(error.code, error.message)


def _handler(method: MethodDescriptor, servicer: Any, refusals: UndecodableRequests) -> grpc.RpcMethodHandler:
    implementation = getattr(servicer, method.name)
    identify = getattr(servicer, "identify", None)
    deserializer = tolerant_deserializer(method)
    serializer = message_factory.GetMessageClass(method.output_type).SerializeToString
    if method.client_streaming:
        raise NotImplementedError(f"{method.full_name}: client-streaming RPCs are not registered here")

    if method.server_streaming:
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if isinstance(request, Undecodable):
                await refusals.refuse(request, context, identify)
                return
            async with contextlib.aclosing(implementation(request, context)) as responses:  # closed with us
                async for response in responses:
                    yield response

        return grpc.unary_stream_rpc_method_handler(stream, request_deserializer=deserializer,
                                                    response_serializer=serializer)

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            await refusals.refuse(request, context, identify)
        return await implementation(request, context)

    return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=deserializer,
                                               response_serializer=serializer)


def method_handlers(servicer: Any, metrics: Metrics, service: ServiceDescriptor = SERVICE,
                    burst_log: BurstLog | None = None) -> dict[str, grpc.RpcMethodHandler]:
    """One handler per RPC of ``service``, each decoding tolerantly."""
    refusals = UndecodableRequests(metrics, burst_log)
    return {method.name: _handler(method, servicer, refusals) for method in service.methods}


def add_explainer_to_server(servicer: Any, server: grpc.aio.Server, metrics: Metrics,
                            burst_log: BurstLog | None = None) -> None:
    """What ``add_ExplainerServicer_to_server`` does, with requests that do not parse refused cleanly."""
    handlers = method_handlers(servicer, metrics, SERVICE, burst_log)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)
