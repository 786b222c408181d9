"""Who is calling: bearer tokens from a file, kept only as sha256 hashes, reloaded when the file changes.

The token file has one ``TENANT TOKEN`` pair per line; ``#`` starts a comment, blank lines are
skipped. A tenant may have several tokens (rotation: add the new one, move the clients, remove the
old one); a token belongs to one tenant. Nothing here ever logs or echoes a token: errors name the
file and the line number only.

The file is checked for changes (inode, size, modification time) at most once a second, on the
call path; a Kubernetes secret mount, which swaps a symlink, counts as a change. A reload that
fails (a half-written file, a bad line) keeps the tokens in force and logs once per version of the
file; a file that was removed keeps them too.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import grpc

from ..errors import Unauthenticated
from .servicer import ANONYMOUS

log = logging.getLogger(__name__)

MAX_TOKEN_FILE_BYTES = 1 << 20
RELOAD_CHECK_SECONDS = 1.0
TENANT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}")
TOKEN_PATTERN = re.compile(r"[\x21-\x7e]+")  # what a metadata value can carry: visible ASCII
SHORT_TOKEN = 16


class TokenFileError(ValueError):
    """A token file that cannot be used; the message names the file and line, never a token."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()


@dataclass(frozen=True)
class TokenTable:
    """The tenants of one version of the token file, keyed by the sha256 of their tokens."""

    entries: tuple[tuple[bytes, str], ...]
    short_token_lines: tuple[int, ...] = ()  # lines whose token is shorter than SHORT_TOKEN characters

    @property
    def tenants(self) -> frozenset[str]:
        return frozenset(tenant for _, tenant in self.entries)

    def tenant_for(self, token: str) -> str | None:
        """The token's tenant, or None. Every entry is compared in constant time (no early exit)."""
        candidate = _digest(token)
        found: str | None = None
        for digest, tenant in self.entries:
            if hmac.compare_digest(digest, candidate):
                found = tenant
        return found


def parse_token_file(text: str, source: str) -> TokenTable:
    """The table of a token file's text; TokenFileError naming `source` and the line on a bad line."""
    entries: list[tuple[bytes, str]] = []
    first_line: dict[bytes, int] = {}
    short: list[int] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        where = f"{source} line {number}"
        if len(fields) != 2:
            raise TokenFileError(f"{where}: expected 'TENANT TOKEN' (two fields separated by spaces), "
                                 f"got {len(fields)} field{'s' if len(fields) != 1 else ''}")
        tenant, token = fields
        if not TENANT_PATTERN.fullmatch(tenant):
            raise TokenFileError(f"{where}: expected a tenant name of 1 to 64 letters, digits and ._@:- "
                                 f"starting with a letter or digit, got {tenant[:100]!r}")
        if not TOKEN_PATTERN.fullmatch(token):
            raise TokenFileError(f"{where}: the token has characters a gRPC metadata value cannot carry "
                                 "(expected visible ASCII only)")
        digest = _digest(token)
        if digest in first_line:
            raise TokenFileError(f"{where}: the same token as line {first_line[digest]} "
                                 "(a token belongs to one tenant)")
        first_line[digest] = number
        entries.append((digest, tenant))
        if len(token) < SHORT_TOKEN:
            short.append(number)
    return TokenTable(tuple(entries), tuple(short))


def _signature(stat: os.stat_result) -> tuple[int, int, int, int]:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


class TokenStore:
    """The token file's table, reloaded when the file changes (checked at most once a second)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._signature, self.table = self._read()
        if not self.table.entries:
            raise TokenFileError(f"auth_tokens {path}: no 'TENANT TOKEN' line (every call would be refused)")
        self._warn_short(self.table)
        self._checked = clock()
        self._last_failure: tuple[int, int, int, int] | str | None = None  # logged already
        log.info("auth tokens loaded", extra={"path": str(path), "tokens": len(self.table.entries),
                                              "tenants": sorted(self.table.tenants)})

    def _read(self) -> tuple[tuple[int, int, int, int], TokenTable]:
        try:
            with self.path.open("rb") as file:
                signature = _signature(os.fstat(file.fileno()))
                data = file.read(MAX_TOKEN_FILE_BYTES + 1)
        except OSError as exc:
            raise TokenFileError(f"auth_tokens {self.path}: cannot read it ({exc.strerror or exc})") from None
        if len(data) > MAX_TOKEN_FILE_BYTES:
            raise TokenFileError(f"auth_tokens {self.path}: expected at most {MAX_TOKEN_FILE_BYTES} bytes, "
                                 "got more")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TokenFileError(f"auth_tokens {self.path}: not UTF-8 text (byte {exc.start})") from None
        return signature, parse_token_file(text, f"auth_tokens {self.path}")

    def _warn_short(self, table: TokenTable) -> None:
        if table.short_token_lines:
            log.warning("auth tokens shorter than %d characters are easy to guess", SHORT_TOKEN,
                        extra={"path": str(self.path), "lines": list(table.short_token_lines)})

    def refresh(self) -> None:
        """Reload the file if it changed since the last check, at most once per RELOAD_CHECK_SECONDS."""
        now = self._clock()
        if now - self._checked < RELOAD_CHECK_SECONDS:
            return
        self._checked = now
        try:
            signature = _signature(self.path.stat())
        except OSError as exc:
            self._failed("missing", f"auth_tokens {self.path}: cannot read it ({exc.strerror or exc})")
            return
        if signature in (self._signature, self._last_failure):
            return  # unchanged, or the version that failed already (logged)
        try:
            signature, table = self._read()
        except TokenFileError as exc:
            self._failed(signature, str(exc))
            return
        if not table.entries:
            log.warning("auth tokens: the file has no tokens any more; every call is refused",
                        extra={"path": str(self.path)})
        self._warn_short(table)
        self._signature, self.table, self._last_failure = signature, table, None
        log.info("auth tokens reloaded", extra={"path": str(self.path), "tokens": len(table.entries),
                                                "tenants": sorted(table.tenants)})

    def _failed(self, failure: tuple[int, int, int, int] | str, message: str) -> None:
        """Keep the tokens in force; log once per version of the file that fails (or while it is missing)."""
        if failure != self._last_failure:
            log.error("auth tokens not reloaded, the previous ones stay in force: %s", message)
        self._last_failure = failure

    def tenant_for(self, token: str) -> str | None:
        self.refresh()
        return self.table.tenant_for(token)


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of the call's `authorization: Bearer TOKEN` metadata, or None."""
    values = [value for key, value in (metadata or ()) if key.lower() == "authorization"]
    if len(values) != 1 or not isinstance(values[0], str):
        return None
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


class Authenticator:
    """identify(context) -> tenant for the servicer's hook; may_control_models for LoadModel/UnloadModel."""

    def __init__(self, store: TokenStore | None, admin_tenants: frozenset[str] = frozenset()) -> None:
        self.store = store
        self.admin_tenants = admin_tenants

    @property
    def enabled(self) -> bool:
        return self.store is not None

    def identify(self, context: grpc.aio.ServicerContext) -> str:
        if self.store is None:
            return ANONYMOUS
        token = bearer_token(context.invocation_metadata())
        if token is None:
            raise Unauthenticated("missing bearer token: send metadata 'authorization: Bearer TOKEN'")
        tenant = self.store.tenant_for(token)
        if tenant is None:
            raise Unauthenticated("unknown bearer token")
        return tenant

    def may_control_models(self, tenant: str) -> bool:
        """Whether `tenant` may call LoadModel / UnloadModel: anyone without auth, else admin tenants."""
        return self.store is None or tenant in self.admin_tenants


def authenticator(auth_tokens: str, admin_tenants: frozenset[str]) -> Authenticator:
    """The authenticator the settings ask for; TokenFileError when the file cannot be used."""
    if not auth_tokens:
        return Authenticator(None)
    store = TokenStore(Path(auth_tokens))
    unknown = sorted(admin_tenants - store.table.tenants)
    if unknown:
        log.warning("admin tenants without a token in the file", extra={"tenants": unknown})
    return Authenticator(store, admin_tenants)
