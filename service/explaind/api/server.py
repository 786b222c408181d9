"""The gRPC server: Explainer, health checking, reflection, metrics, and graceful shutdown.

On SIGTERM (or SIGINT) health turns NOT_SERVING, new Explain calls are answered UNAVAILABLE, calls
in flight get `grace_period_s` to finish, then the engine stops and `serve` returns (exit code 0).
The server keeps answering during the grace period, so health checks see NOT_SERVING and clients
get a clear UNAVAILABLE rather than a refused connection.

Security: TLS (tls_cert, tls_key), mTLS (tls_client_ca), bearer tokens (auth_tokens, see api/auth.py)
on the Explainer service; health checking and reflection stay open. `health_port` adds a plaintext
server with only grpc.health.v1 (same state), for probes that cannot speak TLS. A setting the server
cannot start with (a port in use, a missing file or folder) raises StartupError with one line.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
from explaind_client.v1 import explaind_pb2 as pb
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from ..config import Settings
from ..engine.device import limit_blas_threads
from ..engine.engine import Engine
from ..explainer import Explainer
from ..metrics import Metrics
from ..models.repository import LoadedModel, ModelRepository, RepositoryLimits
from . import gateway
from .auth import TokenFileError, authenticator
from .decoding import add_explainer_to_server
from .servicer import ExplainerServicer

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Explainer"].full_name
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
REFLECTION_V1_FILE = "grpc/reflection/v1/reflection.proto"
REFLECTION_V1_PACKAGE = "grpc.reflection.v1"


class StartupError(Exception):
    """A setting the server cannot start with; the message is one line for the operator."""


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    servicer: ExplainerServicer
    health: health.aio.HealthServicer
    engine: Engine
    metrics: Metrics
    metrics_http: object | None
    settings: Settings
    health_server: grpc.aio.Server | None = None  # the plaintext health_port server
    health_port: int | None = None
    http: gateway.Uvicorn | None = None  # the HTTP/JSON gateway (http_port)
    http_port: int | None = None

    async def stop(self) -> None:
        """Graceful stop: NOT_SERVING, refuse new calls, let calls in flight finish, stop the engine."""
        log.info("shutting down", extra={"grace_seconds": self.settings.grace_period_s})
        await self.servicer.explainer.control.stop()  # no model (re)loads while draining
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.servicer.accepting = False
        finished = await self.servicer.wait_idle(self.settings.grace_period_s)
        if not finished:
            log.warning("grace period over; cancelling calls in flight", extra={"calls": self.servicer.in_flight})
        await self.server.stop(0 if not finished else 1.0)
        if self.http is not None:
            await self.http.stop()
        if self.health_server is not None:
            await self.health_server.stop(0)
        await self.engine.close()
        if self.metrics_http is not None:
            self.metrics_http.shutdown()  # type: ignore[attr-defined]
        log.info("stopped")


async def start(settings: Settings) -> RunningServer:
    """Load the repository, start the engine and the server; returns once it accepts calls.

    StartupError (nothing left running) when a port is taken, a file cannot be used or the
    repository is not a folder."""
    limit_blas_threads(settings.blas_threads)
    check_repository(settings.repository_path)
    for what, host, port in (("port", settings.host, settings.port),
                             ("metrics_port", settings.metrics_host, settings.metrics_port),
                             ("health_port", settings.host, settings.health_port),
                             ("http_port", settings.host, settings.http_port)):
        check_port_free(what, host, port)  # before loading the models: a taken port fails at once
    credentials = server_credentials(settings)
    try:
        auth = authenticator(settings.auth_tokens, settings.admin_tenant_names)
    except TokenFileError as exc:
        raise StartupError(str(exc)) from None
    metrics = Metrics()
    repository = ModelRepository(settings.repository_path, RepositoryLimits(max_model_bytes=settings.max_model_bytes))
    repository.scan()
    for entry in repository.list():
        log.info("model", extra={"model": entry.name, "status": entry.status, "reason": entry.reason,
                                 "sha256": entry.sha256})
    engine = Engine(settings, metrics)
    explainer = Explainer(settings, repository, engine)
    if settings.tree_shap_preload:  # opt-in: the models loaded at start warmed as a reloaded version is
        for entry in repository.list():
            if isinstance(entry, LoadedModel):
                try:
                    await asyncio.get_running_loop().run_in_executor(None, explainer.warm, entry)
                    log.info("model warmed", extra={"model": entry.name, "sha256": entry.sha256})
                except Exception:  # warming is an optimisation: requests compute what it did not
                    log.exception("warming model caches failed", extra={"model": entry.name})
    servicer = ExplainerServicer(explainer, metrics, identify=auth.identify,
                                 may_control_models=auth.may_control_models)
    options = [("grpc.max_receive_message_length", settings.max_message_bytes),
               ("grpc.max_send_message_length", settings.max_message_bytes)]
    options.append(("grpc.so_reuseport", 0))  # a second server on the port fails instead of sharing it
    server = grpc.aio.server(options=options)
    add_explainer_to_server(servicer, server, metrics)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if settings.reflection:
        enable_reflection(server, (SERVICE_NAME, HEALTH_SERVICE_NAME))
    health_server: grpc.aio.Server | None = None
    metrics_http: object | None = None
    http: gateway.Uvicorn | None = None
    http_port: int | None = None
    try:
        port = add_port(server, "port", settings.host, settings.port, credentials)
        health_port = None
        if settings.health_port >= 0:
            health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
            health_port = add_port(health_server, "health_port", settings.host, settings.health_port, None)
        if settings.metrics_port >= 0:
            try:
                metrics_http = metrics.serve(settings.metrics_port, settings.metrics_host)
            except OSError as exc:
                address = _address(settings.metrics_host, settings.metrics_port)
                raise StartupError(f"metrics_port: cannot listen on {address} ({exc.strerror or exc})") from None
        await server.start()
        if health_server is not None:
            await health_server.start()
        if settings.http_port >= 0:
            try:
                sock = gateway.listen(settings.host, settings.http_port)
            except OSError as exc:
                address = _address(settings.host, settings.http_port)
                raise StartupError(f"http_port: cannot listen on {address} ({exc.strerror or exc})") from None
            http_port = sock.getsockname()[1]
            http = await gateway.serve(servicer, settings, sock)
    except BaseException:
        if http is not None:
            await http.stop()
        if metrics_http is not None:
            metrics_http.shutdown()  # type: ignore[attr-defined]
        await server.stop(0)
        if health_server is not None:
            await health_server.stop(0)
        await engine.close()
        raise
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    explainer.control.start()  # repository polling, every repository_poll_s (0: off)
    log.info("serving", extra={"port": port, "metrics_port": settings.metrics_port, "device": engine.device.kind,
                               "tls": "mtls" if settings.tls_client_ca else "tls" if credentials else "off",
                               "auth": "tokens" if auth.enabled else "off", "reflection": settings.reflection,
                               "health_port": health_port, "http_port": http_port, "repository": str(settings.repository_path),
                               "models": [e.name for e in repository.list()]})
    return RunningServer(server, port, servicer, health_servicer, engine, metrics, metrics_http, settings,
                         health_server, health_port, http, http_port)


def check_repository(path: Path) -> None:
    if not path.exists():
        raise StartupError(f"repository {path}: no such folder")
    if not path.is_dir():
        raise StartupError(f"repository {path}: expected a folder of model folders, got a file")


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def check_port_free(what: str, host: str, port: int) -> None:
    """StartupError when another process listens on host:port (0 and -1: nothing to check).

    gRPC would tell only that binding failed, and only after the models loaded; this names the port."""
    if port <= 0:
        return
    try:
        addresses = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"{what}: cannot resolve the host {host!r} ({exc.strerror})") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: TIME_WAIT is no conflict
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise StartupError(f"{what}: {_address(host, port)} is already in use by another process") from None
                # Other failures (an address family the host lacks) are for the real bind to judge.


def add_port(server: grpc.aio.Server, what: str, host: str, port: int,
             credentials: grpc.ServerCredentials | None) -> int:
    """Bind host:port (TLS with credentials); the port bound, or StartupError naming the setting."""
    address = _address(host, port)
    try:
        bound = (server.add_secure_port(address, credentials) if credentials is not None
                 else server.add_insecure_port(address))
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise StartupError(f"{what}: cannot listen on {address} (in use, or not an address of this host)")
    return bound


def _read_pem(name: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise StartupError(f"{name} {path}: cannot read it ({exc.strerror or exc})") from None
    if b"-----BEGIN " not in data:
        raise StartupError(f"{name} {path}: expected a PEM file (-----BEGIN ...), "
                           f"got {len(data)} bytes of something else")
    return data


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials (mTLS with tls_client_ca), checked here so that a bad file fails at startup."""
    if not settings.tls_cert:
        return None
    chain, key = _read_pem("tls_cert", settings.tls_cert), _read_pem("tls_key", settings.tls_key)
    client_ca = _read_pem("tls_client_ca", settings.tls_client_ca) if settings.tls_client_ca else None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except ssl.SSLError as exc:
        raise StartupError(f"tls_cert {settings.tls_cert} with tls_key {settings.tls_key}: cannot be used "
                           f"({exc.reason or exc}; a certificate chain and its own private key, PEM)") from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=settings.tls_client_ca)
        except ssl.SSLError as exc:
            raise StartupError(f"tls_client_ca {settings.tls_client_ca}: expected PEM CA certificates "
                               f"({exc.reason or exc})") from None
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def reflection_v1_service(pool: descriptor_pool.DescriptorPool) -> str:
    """grpc.reflection.v1's service name, its file added to `pool` once if grpcio-reflection lacks it.

    v1 is v1alpha renamed: the same messages with the same field numbers and types (compared against
    grpc's reflection/v1/reflection.proto), so they are wire-identical and the v1alpha servicer can
    answer v1 calls. The file is derived from v1alpha's, so that v1 clients can also describe it."""
    try:
        pool.FindFileByName(REFLECTION_V1_FILE)
    except KeyError:
        file = descriptor_pb2.FileDescriptorProto()
        reflection_pb2.DESCRIPTOR.CopyToProto(file)
        old, new = f".{file.package}.", f".{REFLECTION_V1_PACKAGE}."
        file.name, file.package = REFLECTION_V1_FILE, REFLECTION_V1_PACKAGE
        for message in file.message_type:
            for f in message.field:
                if f.type_name:
                    f.type_name = f.type_name.replace(old, new)
        for service in file.service:
            for method in service.method:
                method.input_type = method.input_type.replace(old, new)
                method.output_type = method.output_type.replace(old, new)
        file.options.ClearField("deprecated")
        file.options.java_package = "io.grpc.reflection.v1"
        file.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
        pool.AddSerializedFile(file.SerializeToString())
    return f"{REFLECTION_V1_PACKAGE}.ServerReflection"


def enable_reflection(server: grpc.aio.Server, services: tuple[str, ...]) -> None:
    """Reflection as grpc.reflection.v1 (what grpcurl and recent tools ask first) and v1alpha."""
    pool = descriptor_pool.Default()
    v1 = reflection_v1_service(pool)
    servicer = reflection.aio.ReflectionServicer((*services, v1, reflection.SERVICE_NAME), pool=pool)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(v1, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)}),))


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    running = await start(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await running.stop()
