"""Transport security and identity on real servers: TLS, mTLS, bearer tokens, the plaintext health
port, reflection v1 / v1alpha / off, and startup errors (a port in use, a missing repository).

Certificates come from the openssl CLI in a temporary folder: a CA, a server certificate for
localhost and 127.0.0.1, a client certificate, and a second CA with its own client certificate.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from explaind_client import ExplaindClient
from explaind_client.v1 import explaind_pb2 as pb

from _server import Server, free_port, start_server, stop_server

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")

ALICE, BOB = "alice-token-0123456789abcdef", "bob-token-fedcba9876543210"
ROW = np.linspace(0.5, 2.0, 13, dtype=np.float32)  # one tabular example (13 features)


# Certificates ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pki:
    folder: Path

    def path(self, name: str) -> Path:
        return self.folder / name

    def read(self, name: str) -> bytes:
        return (self.folder / name).read_bytes()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(folder: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=explaind test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=folder)


def _make_leaf(folder: Path, name: str, ca: str, extensions: str, serial: int) -> None:
    (folder / f"{name}.ext").write_text(extensions)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-set_serial", str(serial), "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext",
             cwd=folder)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    _make_ca(folder, "ca")
    _make_ca(folder, "other-ca")
    _make_leaf(folder, "server", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
               "extendedKeyUsage=serverAuth\n", serial=1)
    _make_leaf(folder, "client", "ca", "extendedKeyUsage=clientAuth\n", serial=2)
    _make_leaf(folder, "stranger", "other-ca", "extendedKeyUsage=clientAuth\n", serial=3)
    return Pki(folder)


# Helpers --------------------------------------------------------------------------------------

def health_at(address: str, credentials: grpc.ChannelCredentials | None = None, service: str = "") -> str:
    channel = (grpc.secure_channel(address, credentials) if credentials is not None
               else grpc.insecure_channel(address))
    with channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                             timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def health_port_probe(port: int) -> Callable[[Server], str]:
    return lambda server: health_at(f"127.0.0.1:{port}")


def refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def reflection_services(address: str, version: str, credentials: grpc.ChannelCredentials | None = None) -> list[str]:
    """The services a ServerReflectionInfo list_services request of `version` (v1 or v1alpha) lists."""
    channel = (grpc.secure_channel(address, credentials) if credentials is not None
               else grpc.insecure_channel(address))
    with channel:
        call = channel.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                                     request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                     response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        responses = list(call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
    return [s.name for s in responses[0].list_services_response.service]


def cli_serve(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "EXPLAIND_LOG_FORMAT": "json", "EXPLAIND_INTRA_OP_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "explaind.cli", "serve", "--host", "127.0.0.1", *args],
                          env=env, capture_output=True, text=True, timeout=timeout)


# TLS ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_server(repository, pki, tmp_path_factory) -> Iterator[tuple[Server, int]]:
    health_port = free_port()
    srv = start_server(repository, tmp_path_factory.mktemp("tls") / "server.log",
                       probe=health_port_probe(health_port), tls_cert=pki.path("server.pem"),
                       tls_key=pki.path("server.key"), health_port=health_port)
    yield srv, health_port
    assert stop_server(srv) == 0, srv.log()


def test_tls_client_trusting_the_ca_is_served(tls_server, pki):
    srv, _ = tls_server
    with ExplaindClient(srv.address, root_certificates=pki.read("ca.pem"), timeout=30) as client:
        assert {m.name for m in client.list_models()} == {"shapes", "tabular", "broken"}
        result = client.explain("tabular", method="occlusion", tensor=ROW)
        assert result.attribution.shape == (13,) and result.stats["tenant"] == "anonymous"
    port = srv.address.rsplit(":", 1)[1]
    with ExplaindClient(f"localhost:{port}", root_certificates=pki.read("ca.pem"), timeout=30) as client:
        assert client.get_model("tabular").num_features == 13
    assert health_at(srv.address, grpc.ssl_channel_credentials(pki.read("ca.pem"))) == "SERVING"


def test_tls_server_refuses_plaintext_and_clients_that_do_not_trust_its_ca(tls_server, pki):
    srv, _ = tls_server
    with ExplaindClient(srv.address, timeout=5) as plaintext:
        assert refused(plaintext.list_models).code() == grpc.StatusCode.UNAVAILABLE
    with ExplaindClient(srv.address, root_certificates=pki.read("other-ca.pem"), timeout=5) as untrusting:
        assert refused(untrusting.list_models).code() == grpc.StatusCode.UNAVAILABLE
    with ExplaindClient(srv.address, tls=True, timeout=5) as system_roots:  # the system's CAs: not ours
        assert refused(system_roots.list_models).code() == grpc.StatusCode.UNAVAILABLE
    assert refused(lambda: health_at(srv.address)).code() == grpc.StatusCode.UNAVAILABLE


def test_server_name_overrides_the_name_the_certificate_is_checked_for(tls_server, pki):
    srv, _ = tls_server
    with ExplaindClient(srv.address, root_certificates=pki.read("ca.pem"), server_name="localhost",
                        timeout=10) as client:
        assert client.get_model("tabular").num_features == 13
    with ExplaindClient(srv.address, root_certificates=pki.read("ca.pem"), server_name="elsewhere.example",
                        timeout=5) as client:
        assert refused(client.list_models).code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_health_port_answers_for_the_tls_server(tls_server):
    srv, health_port = tls_server
    assert health_at(f"127.0.0.1:{health_port}") == "SERVING"
    assert health_at(f"127.0.0.1:{health_port}", service="explaind.v1.Explainer") == "SERVING"
    with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:  # health only: no Explainer there
        with ExplaindClient(channel=channel, timeout=5) as client:
            assert refused(client.list_models).code() == grpc.StatusCode.UNIMPLEMENTED
    assert f'"health_port": {health_port}' in srv.log() and '"tls": "tls"' in srv.log()


def test_reflection_over_tls_lists_the_explainer_in_v1_and_v1alpha(tls_server, pki):
    srv, _ = tls_server
    credentials = grpc.ssl_channel_credentials(pki.read("ca.pem"))
    for version in ("v1", "v1alpha"):
        services = reflection_services(srv.address, version, credentials)
        assert "explaind.v1.Explainer" in services and "grpc.health.v1.Health" in services


# mTLS -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mtls_server(repository, pki, tmp_path_factory) -> Iterator[Server]:
    health_port = free_port()
    srv = start_server(repository, tmp_path_factory.mktemp("mtls") / "server.log",
                       probe=health_port_probe(health_port), tls_cert=pki.path("server.pem"),
                       tls_key=pki.path("server.key"), tls_client_ca=pki.path("ca.pem"), health_port=health_port)
    yield srv
    assert stop_server(srv) == 0, srv.log()


def test_mtls_serves_a_client_certificate_signed_by_the_client_ca(mtls_server, pki):
    with ExplaindClient(mtls_server.address, root_certificates=pki.read("ca.pem"),
                        private_key=pki.read("client.key"), certificate_chain=pki.read("client.pem"),
                        timeout=30) as client:
        assert client.explain("tabular", method="occlusion", tensor=ROW).attribution.shape == (13,)
    assert '"tls": "mtls"' in mtls_server.log()


def test_mtls_refuses_clients_without_a_certificate_or_with_one_of_another_ca(mtls_server, pki):
    with ExplaindClient(mtls_server.address, root_certificates=pki.read("ca.pem"), timeout=5) as anonymous:
        assert refused(anonymous.list_models).code() == grpc.StatusCode.UNAVAILABLE
    with ExplaindClient(mtls_server.address, root_certificates=pki.read("ca.pem"),
                        private_key=pki.read("stranger.key"), certificate_chain=pki.read("stranger.pem"),
                        timeout=5) as stranger:
        assert refused(stranger.list_models).code() == grpc.StatusCode.UNAVAILABLE


# Bearer tokens --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def token_server(repository, tmp_path_factory) -> Iterator[tuple[Server, Path]]:
    folder = tmp_path_factory.mktemp("tokens")
    tokens = folder / "tokens.txt"
    tokens.write_text(f"# tenant token\n\nalice {ALICE}\n")
    srv = start_server(repository, folder / "server.log", auth_tokens=tokens, admin_tenants="alice",
                       reflection="false")
    yield srv, tokens
    assert stop_server(srv) == 0, srv.log()


def test_calls_without_a_token_or_with_an_unknown_one_are_unauthenticated(token_server):
    srv, _ = token_server
    with srv.client(timeout=10) as nobody:
        error = refused(lambda: nobody.explain("tabular", method="occlusion", tensor=ROW))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "missing bearer token" in error.details()
        assert refused(nobody.list_models).code() == grpc.StatusCode.UNAUTHENTICATED
    wrong = "not-a-known-token-4242"
    with srv.client(token=wrong, timeout=10) as stranger:
        error = refused(lambda: stranger.explain("tabular", method="occlusion", tensor=ROW))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED and error.details() == "unknown bearer token"
        assert refused(lambda: stranger.get_model("tabular")).code() == grpc.StatusCode.UNAUTHENTICATED
    with srv.client(timeout=10) as basic:  # the right token under another scheme than Bearer
        error = refused(lambda: basic.stub.ListModels(pb.ListModelsRequest(), timeout=10,
                                                      metadata=[("authorization", f"Basic {ALICE}")]))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "missing bearer token" in error.details()
    assert wrong not in srv.log() and ALICE not in srv.log()
    metrics = urllib.request.urlopen(srv.metrics_url, timeout=5).read().decode()
    assert 'code="UNAUTHENTICATED"' in metrics


def test_a_known_token_is_served_and_its_tenant_is_in_the_stats(token_server):
    srv, _ = token_server
    with srv.client(token=ALICE, timeout=30) as alice:
        result = alice.explain("tabular", method="occlusion", tensor=ROW)
        assert result.stats["tenant"] == "alice" and result.attribution.shape == (13,)
        assert "tabular" in {m.name for m in alice.list_models()}
        streamed = [u for u in alice.explain_stream("tabular", method="occlusion", tensor=ROW)
                    if hasattr(u, "stats") and not u.partial]
        assert streamed[-1].stats["tenant"] == "alice"


def test_health_needs_no_token_and_reflection_can_be_switched_off(token_server):
    srv, _ = token_server
    assert srv.health() == "SERVING" and srv.health("explaind.v1.Explainer") == "SERVING"
    for version in ("v1", "v1alpha"):
        assert refused(lambda: reflection_services(srv.address, version)).code() == grpc.StatusCode.UNIMPLEMENTED


def _wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if condition():
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"not within {seconds} s")


def _tenant_of(srv: Server, token: str) -> str | None:
    with srv.client(token=token, timeout=10) as client:
        try:
            return client.explain("tabular", method="occlusion", tensor=ROW).stats["tenant"]
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc
            return None


def test_token_file_changes_apply_while_running_and_a_bad_edit_keeps_the_old_tokens(token_server):
    srv, tokens = token_server
    assert _tenant_of(srv, BOB) is None
    # Replaced atomically (as a Kubernetes secret mount does): bob added.
    fresh = tokens.with_suffix(".new")
    fresh.write_text(f"alice {ALICE}\nbob {BOB}\n")
    os.replace(fresh, tokens)
    assert _wait_for(lambda: _tenant_of(srv, BOB) == "bob") < 3.0
    # Edited in place: alice's token removed.
    tokens.write_text(f"bob {BOB}\n")
    assert _wait_for(lambda: _tenant_of(srv, ALICE) is None) < 3.0
    assert _tenant_of(srv, BOB) == "bob"
    # A malformed edit: refused with its line number, bob's token stays in force.
    tokens.write_text(f"bob {BOB}\ncarol\n")
    time.sleep(1.5)
    assert _tenant_of(srv, BOB) == "bob" and _tenant_of(srv, BOB) == "bob"
    _wait_for(lambda: "line 2: expected 'TENANT TOKEN'" in srv.log())
    time.sleep(1.2)
    assert _tenant_of(srv, BOB) == "bob"
    assert srv.log().count("auth tokens not reloaded") == 1  # logged once for that version of the file
    tokens.write_text(f"alice {ALICE}\n")  # back as the other tests expect
    assert _wait_for(lambda: _tenant_of(srv, ALICE) == "alice") < 3.0
    assert ALICE not in srv.log() and BOB not in srv.log()


# Startup errors -------------------------------------------------------------------------------

def _one_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_second_server_on_a_port_in_use_exits_1_with_one_line(token_server, repository):
    srv, _ = token_server
    port = srv.address.rsplit(":", 1)[1]
    result = cli_serve("--port", port, "--metrics-port", "-1", "--repository", str(repository))
    assert result.returncode == 1
    assert _one_line(result) == f"explaind serve: port: 127.0.0.1:{port} is already in use by another process"
    assert srv.health() == "SERVING"
    metrics_port = srv.metrics_url.split(":")[2].split("/")[0]
    result = cli_serve("--port", "0", "--metrics-port", metrics_port, "--repository", str(repository))
    assert result.returncode == 1
    assert _one_line(result) == (f"explaind serve: metrics_port: 127.0.0.1:{metrics_port} "
                                 "is already in use by another process")


def test_a_missing_repository_exits_1_with_one_line(tmp_path):
    result = cli_serve("--port", "0", "--metrics-port", "-1", "--repository", str(tmp_path / "nowhere"))
    assert result.returncode == 1
    assert _one_line(result) == f"explaind serve: repository {tmp_path / 'nowhere'}: no such folder"
    (tmp_path / "file").write_text("not a folder")
    result = cli_serve("--port", "0", "--metrics-port", "-1", "--repository", str(tmp_path / "file"))
    assert result.returncode == 1
    assert _one_line(result) == (f"explaind serve: repository {tmp_path / 'file'}: "
                                 "expected a folder of model folders, got a file")


def test_unusable_security_files_exit_1_with_one_line_naming_them(tmp_path, pki, repository):
    secret = "s3cret-do-not-print-me"
    (tmp_path / "tokens").write_text(f"# ok\nalice {ALICE}\nbob {secret} extra\n")
    result = cli_serve("--port", "0", "--metrics-port", "-1", "--repository", str(repository),
                       "--auth-tokens", str(tmp_path / "tokens"))
    assert result.returncode == 1 and secret not in result.stderr
    assert _one_line(result) == (f"explaind serve: auth_tokens {tmp_path / 'tokens'} line 3: expected "
                                 "'TENANT TOKEN' (two fields separated by spaces), got 3 fields")
    (tmp_path / "tokens").write_text(f"alice {secret}\nbob {secret}\n")
    result = cli_serve("--port", "0", "--metrics-port", "-1", "--repository", str(repository),
                       "--auth-tokens", str(tmp_path / "tokens"))
    assert result.returncode == 1 and secret not in result.stderr
    assert _one_line(result).endswith("line 2: the same token as line 1 (a token belongs to one tenant)")
    result = cli_serve("--port", "0", "--metrics-port", "-1", "--repository", str(repository),
                       "--tls-cert", str(pki.path("server.pem")), "--tls-key", str(pki.path("client.key")))
    assert result.returncode == 1
    assert _one_line(result).startswith(f"explaind serve: tls_cert {pki.path('server.pem')} with tls_key "
                                        f"{pki.path('client.key')}: cannot be used (KEY_VALUES_MISMATCH")
    result = cli_serve("--port", "0", "--metrics-port", "-1", "--repository", str(repository),
                       "--tls-cert", str(tmp_path / "absent.pem"), "--tls-key", str(pki.path("server.key")))
    assert result.returncode == 1
    assert _one_line(result) == (f"explaind serve: tls_cert {tmp_path / 'absent.pem'}: cannot read it "
                                 "(No such file or directory)")
    result = cli_serve("--tls-cert", str(pki.path("server.pem")))
    assert result.returncode == 2
    assert _one_line(result) == ("explaind serve: tls_cert and tls_key go together: set both (TLS) or neither "
                                 "(plaintext)")
