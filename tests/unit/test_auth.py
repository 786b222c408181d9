"""The token file: its parser, the store's reloads (a fake clock, a real file), the bearer header,
the authenticator's answers, and the security settings' validation."""

from __future__ import annotations

import hashlib
import logging
import os

import pytest

from explaind.api.auth import (Authenticator, TokenFileError, TokenStore, authenticator, bearer_token,
                               parse_token_file)
from explaind.config import load_settings
from explaind.errors import Unauthenticated

ALICE, ALICE_OLD, BOB = "alice-0123456789abcdef", "alice-old-0123456789ab", "bob-fedcba9876543210"


# Parser ---------------------------------------------------------------------------------------

def test_pairs_comments_and_blank_lines():
    table = parse_token_file(f"# who  token\n\nalice {ALICE}   # current\n  alice\t{ALICE_OLD}\nbob {BOB}\n", "f")
    assert table.tenants == {"alice", "bob"}
    assert table.tenant_for(ALICE) == "alice" and table.tenant_for(ALICE_OLD) == "alice"
    assert table.tenant_for(BOB) == "bob"
    assert table.tenant_for("bob") is None and table.tenant_for(BOB + "x") is None and table.tenant_for("") is None
    assert table.short_token_lines == ()


def test_only_hashes_of_the_tokens_are_kept():
    table = parse_token_file(f"alice {ALICE}\n", "f")
    assert table.entries == ((hashlib.sha256(ALICE.encode()).digest(), "alice"),)
    assert ALICE not in repr(table)


@pytest.mark.parametrize("text, message", [
    (f"alice {ALICE}\nbob\n", "f line 2: expected 'TENANT TOKEN' (two fields separated by spaces), got 1 field"),
    (f"# x\nalice {ALICE} {BOB}\n", "f line 2: expected 'TENANT TOKEN' (two fields separated by spaces), got 3 fields"),
    (f"-alice {ALICE}\n", "f line 1: expected a tenant name of 1 to 64 letters, digits and ._@:- starting with a "
                          "letter or digit, got '-alice'"),
    (f"{'a' * 65} {ALICE}\n", "f line 1: expected a tenant name"),
    ("alice tökén-0123456789abcdef\n", "f line 1: the token has characters a gRPC metadata value cannot carry"),
    (f"alice {ALICE}\n\nbob {ALICE}\n", "f line 3: the same token as line 1 (a token belongs to one tenant)"),
])
def test_bad_lines_name_the_line_and_never_the_token(text, message):
    with pytest.raises(TokenFileError) as info:
        parse_token_file(text, "f")
    assert str(info.value).startswith(message)
    for token in (ALICE, BOB, "tökén-0123456789abcdef"):
        assert token not in str(info.value)


def test_short_tokens_are_noted_by_line():
    assert parse_token_file(f"alice {ALICE}\nbob short\n", "f").short_token_lines == (2,)


# Store ----------------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_store_reloads_a_changed_file_at_most_once_a_second(tmp_path):
    path, clock = tmp_path / "tokens", Clock()
    path.write_text(f"alice {ALICE}\n")
    store = TokenStore(path, clock)
    path.write_text(f"alice {ALICE}\nbob {BOB}\n")
    clock.now += 0.5
    assert store.tenant_for(BOB) is None  # not checked yet
    clock.now += 0.6
    assert store.tenant_for(BOB) == "bob"
    replacement = tmp_path / "tokens.new"
    replacement.write_text(f"bob {BOB}\n")
    os.replace(replacement, path)  # a new inode, as a Kubernetes secret update
    clock.now += 1.0
    assert store.tenant_for(ALICE) is None and store.tenant_for(BOB) == "bob"


def test_a_failed_reload_keeps_the_tokens_and_logs_once_per_version(tmp_path, caplog):
    path, clock = tmp_path / "tokens", Clock()
    path.write_text(f"alice {ALICE}\n")
    store = TokenStore(path, clock)
    caplog.set_level(logging.ERROR, logger="explaind.api.auth")
    path.write_text(f"alice {ALICE}\nbob\n")
    for _ in range(3):
        clock.now += 1.5
        assert store.tenant_for(ALICE) == "alice"
    assert [r.getMessage() for r in caplog.records] == [
        f"auth tokens not reloaded, the previous ones stay in force: auth_tokens {path} line 2: expected "
        "'TENANT TOKEN' (two fields separated by spaces), got 1 field"]
    path.unlink()
    for _ in range(3):
        clock.now += 1.5
        assert store.tenant_for(ALICE) == "alice"
    assert len(caplog.records) == 2 and "cannot read it (No such file or directory)" in caplog.records[1].getMessage()
    path.write_text(f"bob {BOB}\n")
    clock.now += 1.5
    assert store.tenant_for(BOB) == "bob" and store.tenant_for(ALICE) is None
    assert len(caplog.records) == 2


def test_an_emptied_file_refuses_everyone(tmp_path):
    path, clock = tmp_path / "tokens", Clock()
    path.write_text(f"alice {ALICE}\n")
    store = TokenStore(path, clock)
    path.write_text("# nobody\n")
    clock.now += 1.5
    assert store.tenant_for(ALICE) is None


@pytest.mark.parametrize("content, message", [
    (None, "cannot read it (No such file or directory)"),
    ("# nothing\n", "no 'TENANT TOKEN' line (every call would be refused)"),
    (b"alice \xff\xfe\n", "not UTF-8 text (byte 6)"),
])
def test_a_file_that_cannot_be_used_at_startup_is_an_error(tmp_path, content, message):
    path = tmp_path / "tokens"
    if isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(TokenFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TokenStore(path)


# Bearer header and authenticator --------------------------------------------------------------

@pytest.mark.parametrize("metadata, token", [
    ([("authorization", f"Bearer {ALICE}")], ALICE),
    ([("user-agent", "x"), ("authorization", f"bearer   {ALICE} ")], ALICE),
    ([], None),
    (None, None),
    ([("authorization", f"Basic {ALICE}")], None),
    ([("authorization", "Bearer")], None),
    ([("authorization", "Bearer ")], None),
    ([("authorization", f"Bearer {ALICE}"), ("authorization", f"Bearer {BOB}")], None),
])
def test_bearer_token_reads_one_authorization_header(metadata, token):
    assert bearer_token(metadata) == token


class Context:
    """The one method of grpc.aio.ServicerContext that identify reads."""

    def __init__(self, metadata: list[tuple[str, str]]) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self.metadata


def test_identify_and_model_control(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"alice {ALICE}\nbob {BOB}\n")
    auth = authenticator(str(path), frozenset({"alice"}))
    assert auth.identify(Context([("authorization", f"Bearer {BOB}")])) == "bob"
    with pytest.raises(Unauthenticated, match="^missing bearer token"):
        auth.identify(Context([]))
    with pytest.raises(Unauthenticated, match="^unknown bearer token$"):
        auth.identify(Context([("authorization", "Bearer guess-0123456789abcdef")]))
    assert auth.may_control_models("alice") and not auth.may_control_models("bob")
    assert not auth.may_control_models("anonymous")
    open_auth = authenticator("", frozenset())
    assert not open_auth.enabled and open_auth.identify(Context([])) == "anonymous"
    assert open_auth.may_control_models("anonymous")
    assert Authenticator(None).may_control_models("anyone")


# Settings -------------------------------------------------------------------------------------

def test_security_defaults_suit_a_laptop():
    settings = load_settings(None, {})
    assert settings.host == "127.0.0.1" and settings.metrics_host == "127.0.0.1"
    assert not settings.tls_cert and not settings.auth_tokens and settings.reflection
    assert settings.health_port == -1 and settings.admin_tenant_names == frozenset()


def test_security_settings_from_the_environment():
    settings = load_settings(None, {"EXPLAIND_TLS_CERT": "c.pem", "EXPLAIND_TLS_KEY": "k.pem",
                                    "EXPLAIND_TLS_CLIENT_CA": "ca.pem", "EXPLAIND_AUTH_TOKENS": "t",
                                    "EXPLAIND_ADMIN_TENANTS": "alice, ops", "EXPLAIND_REFLECTION": "off",
                                    "EXPLAIND_HEALTH_PORT": "8081", "EXPLAIND_METRICS_HOST": "0.0.0.0"})
    assert settings.admin_tenant_names == {"alice", "ops"} and settings.reflection is False
    assert settings.health_port == 8081 and settings.tls_client_ca == "ca.pem"


@pytest.mark.parametrize("env, message", [
    ({"EXPLAIND_TLS_CERT": "c.pem"}, "tls_cert and tls_key go together"),
    ({"EXPLAIND_TLS_KEY": "k.pem"}, "tls_cert and tls_key go together"),
    ({"EXPLAIND_TLS_CLIENT_CA": "ca.pem"}, "tls_client_ca (mTLS) needs tls_cert and tls_key"),
    ({"EXPLAIND_ADMIN_TENANTS": "alice"}, "admin_tenants needs auth_tokens"),
    ({"EXPLAIND_AUTH_TOKENS": "t", "EXPLAIND_ADMIN_TENANTS": "alice,,bob"},
     "admin_tenants: expected comma-separated tenant names, got 'alice,,bob'"),
    ({"EXPLAIND_HEALTH_PORT": "-2"}, "health_port must be in [-1, 65535] (-1: off), got -2"),
    ({"EXPLAIND_HEALTH_PORT": "50051"}, "health_port must differ from port and metrics_port, got 50051"),
    ({"EXPLAIND_PORT": "70000"}, "port must be in [0, 65535], got 70000"),
])
def test_bad_security_settings_are_refused(env, message):
    with pytest.raises(ValueError) as info:
        load_settings(None, env)
    assert str(info.value).startswith(message)

