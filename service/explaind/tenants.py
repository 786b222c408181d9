"""Tenants: each caller's priority class and quotas, from a YAML file (setting `tenants`).

    default: {priority: interactive, rows_per_second: 0, rows_in_flight: 0}   # 0: unlimited
    tenants:
      batch-reports: {priority: batch, rows_per_second: 50000, rows_in_flight: 200000}

A tenant is a name (the auth tokens map tokens to names; without auth every caller is "anonymous").
Tenants not listed get the `default` policy, each with quotas of its own. The file is validated
strictly when the server starts (unknown keys, wrong types and YAML aliases are errors naming the
key). `rows_in_flight` bounds the rows admitted and not yet evaluated; `rows_per_second` is a token
bucket holding one second of rows: a request is admitted when the bucket holds its rows (or is full,
for a request larger than one second's worth), which may leave it in debt, so the long-run rate
stays within the quota. Metric labels are the listed names, "anonymous", and "default" for any
other name, so the number of series is bounded by the file.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from .errors import ResourceExhausted

INTERACTIVE = "interactive"
BATCH = "batch"
PRIORITIES = (INTERACTIVE, BATCH)
ANONYMOUS = "anonymous"
DEFAULT = "default"  # the metric label of tenants the file does not list
MAX_FILE_BYTES = 1 << 20
MAX_NAME_CHARS = 100
POLICY_KEYS = ("priority", "rows_per_second", "rows_in_flight")


@dataclass(frozen=True)
class TenantPolicy:
    priority: str = INTERACTIVE
    rows_per_second: float = 0.0  # 0: unlimited
    rows_in_flight: int = 0       # 0: unlimited


@dataclass(frozen=True)
class TenantPolicies:
    default: TenantPolicy = TenantPolicy()
    tenants: Mapping[str, TenantPolicy] = field(default_factory=dict)

    def policy(self, tenant: str) -> TenantPolicy:
        return self.tenants.get(tenant, self.default)

    def label(self, tenant: str) -> str:
        """The tenant's metric label: bounded by the file whatever names callers come with."""
        return tenant if tenant in self.tenants or tenant == ANONYMOUS else DEFAULT

    def labels(self) -> list[str]:
        return sorted({*self.tenants, ANONYMOUS, DEFAULT})


def load_policies(path: str) -> TenantPolicies:
    """The policies of the file at `path` ("" : everyone on the default policy, no quotas); ValueError
    naming the file and the key when it is not valid."""
    if not path:
        return TenantPolicies()
    source = Path(path)
    try:
        with source.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"tenants: cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"tenants: {path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        return parse_policies(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"tenants: {path} is not UTF-8 text") from None
    except ValueError as exc:
        raise ValueError(f"tenants file {path}: {exc}") from None


def parse_policies(text: str) -> TenantPolicies:
    """Policies from YAML text, validated; ValueError naming the key."""
    _refuse_aliases(text)
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML: {_short(exc)}") from None
    if document is None:
        return TenantPolicies()
    if not isinstance(document, dict):
        raise ValueError(f"expected a mapping with keys default and tenants, got {_kind(document)}")
    unknown = [k for k in document if k not in ("default", "tenants")]
    if unknown:
        raise ValueError(f"{_key(unknown[0])}: unknown key (expected default, tenants)")
    default = _policy(document.get("default", {}), "default", TenantPolicy())
    listed = document.get("tenants", {})
    if listed is None:
        listed = {}
    if not isinstance(listed, dict):
        raise ValueError(f"tenants: expected a mapping of tenant name to policy, got {_kind(listed)}")
    tenants: dict[str, TenantPolicy] = {}
    for name, value in listed.items():
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS or name != name.strip():
            raise ValueError(f"tenants: expected tenant names of 1 to {MAX_NAME_CHARS} characters without "
                             f"surrounding spaces, got {_key(name)}")
        if name == DEFAULT:
            raise ValueError("tenants.default: 'default' is not a tenant name (set the top-level default: instead)")
        tenants[name] = _policy(value, f"tenants.{name}", default)
    return TenantPolicies(default, tenants)


def _policy(value: Any, where: str, base: TenantPolicy) -> TenantPolicy:
    """One policy mapping; keys it leaves out come from `base` (the default policy for tenants)."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a mapping with keys {', '.join(POLICY_KEYS)}, got {_kind(value)}")
    for key in value:
        if key not in POLICY_KEYS:
            raise ValueError(f"{where}.{_key(key)}: unknown key (expected {', '.join(POLICY_KEYS)})")
    priority = value.get("priority", base.priority)
    if priority not in PRIORITIES:
        raise ValueError(f"{where}.priority: expected one of {', '.join(PRIORITIES)}, got {_value(priority)}")
    rate = value.get("rows_per_second", base.rows_per_second)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate < 0:
        raise ValueError(f"{where}.rows_per_second: expected a number >= 0 (0: unlimited), got {_value(rate)}")
    in_flight = value.get("rows_in_flight", base.rows_in_flight)
    if isinstance(in_flight, bool) or not isinstance(in_flight, int) or in_flight < 0:
        raise ValueError(f"{where}.rows_in_flight: expected a whole number >= 0 (0: unlimited), "
                         f"got {_value(in_flight)}")
    return TenantPolicy(priority, float(rate), in_flight)


def _refuse_aliases(text: str) -> None:
    """Anchors and aliases are refused before anything is built (an alias bomb costs nothing here)."""
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                line = event.start_mark.line + 1 if event.start_mark else 0
                raise ValueError(f"line {line}: YAML anchors and aliases are not allowed")
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML: {_short(exc)}") from None


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200]


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string"}.get(type(value), type(value).__name__)


def _key(key: Any) -> str:
    text = str(key)
    return repr(text[:MAX_NAME_CHARS] + "...") if len(text) > MAX_NAME_CHARS else repr(text)


def _value(value: Any) -> str:
    return _key(value) if isinstance(value, str) else _kind(value) if isinstance(value, (dict, list)) else str(value)


@dataclass
class _Usage:
    in_flight: int = 0
    tokens: float = 0.0
    refilled_at: float = 0.0


class TenantQuotas:
    """Each tenant's usage against its policy: rows in flight and the rows-per-second bucket.

    Usage is kept per tenant name while the tenant has rows in flight or a bucket not yet full again;
    idle tenants are forgotten (their next request starts with a full bucket, as it would have anyway).
    """

    def __init__(self, policies: TenantPolicies, clock: Callable[[], float] = time.monotonic) -> None:
        self.policies = policies
        self._clock = clock
        self._usage: dict[str, _Usage] = {}
        self._label_in_flight: dict[str, int] = {}

    def in_flight(self, tenant: str) -> int:
        usage = self._usage.get(tenant)
        return usage.in_flight if usage else 0

    def label_in_flight(self, label: str) -> int:
        """Rows in flight of all tenants with this metric label."""
        return self._label_in_flight.get(label, 0)

    def check(self, tenant: str, rows: int, seconds_per_row: float | None) -> None:
        """Refuse (ResourceExhausted naming the quota, with a retry hint) when `rows` more would exceed
        one of the tenant's quotas. `seconds_per_row`: the engine's estimate, for the in-flight hint."""
        policy = self.policies.policy(tenant)
        usage = self._refill(tenant) if tenant in self._usage else _Usage(0, self._capacity(tenant))
        if policy.rows_in_flight and usage.in_flight + rows > policy.rows_in_flight:
            if rows > policy.rows_in_flight:
                raise QuotaExceeded(
                    "rows_in_flight", f"tenant {tenant!r} is over its rows_in_flight quota: this request needs "
                    f"{rows} rows, more than the quota of {policy.rows_in_flight} rows in flight allows at all; "
                    "ask for fewer rows", None)
            excess = usage.in_flight + rows - policy.rows_in_flight
            retry = max(0.01, excess * seconds_per_row) if seconds_per_row else 1.0
            raise QuotaExceeded(
                "rows_in_flight", f"tenant {tenant!r} is over its rows_in_flight quota: {usage.in_flight} of "
                f"{policy.rows_in_flight} rows in flight; this request needs {rows}: retry in {retry:.2f} s",
                retry)
        rate = policy.rows_per_second
        if rate:
            needed = min(float(rows), max(rate, 1.0))  # a request over one second's worth: a full bucket
            if usage.tokens < needed:
                retry = max(0.001, (needed - usage.tokens) / rate)
                raise QuotaExceeded(
                    "rows_per_second", f"tenant {tenant!r} is over its rows_per_second quota of {rate:g} rows "
                    f"per second: this request needs {rows} rows and {max(usage.tokens, 0.0):.0f} are "
                    f"available now: retry in {retry:.2f} s", retry)

    def charge(self, tenant: str, rows: int) -> None:
        """Count `rows` admitted for the tenant (checked first with `check`)."""
        usage = self._refill(tenant)
        usage.in_flight += rows
        if self.policies.policy(tenant).rows_per_second:
            usage.tokens -= rows
        label = self.policies.label(tenant)
        self._label_in_flight[label] = self._label_in_flight.get(label, 0) + rows

    def release(self, tenant: str, rows: int) -> None:
        """`rows` of the tenant's done (evaluated, dropped or refused after all)."""
        usage = self._usage.get(tenant)
        if usage is None or rows <= 0:
            return
        usage.in_flight -= rows
        label = self.policies.label(tenant)
        self._label_in_flight[label] = self._label_in_flight.get(label, 0) - rows
        if usage.in_flight <= 0 and self._refill(tenant).tokens >= self._capacity(tenant):
            del self._usage[tenant]

    def _capacity(self, tenant: str) -> float:
        rate = self.policies.policy(tenant).rows_per_second
        return max(rate, 1.0) if rate else 0.0

    def _refill(self, tenant: str) -> _Usage:
        now = self._clock()
        usage = self._usage.get(tenant)
        if usage is None:
            usage = self._usage[tenant] = _Usage(0, self._capacity(tenant), now)
        rate = self.policies.policy(tenant).rows_per_second
        if rate:
            usage.tokens = min(self._capacity(tenant), usage.tokens + (now - usage.refilled_at) * rate)
        usage.refilled_at = now
        return usage


class QuotaExceeded(ResourceExhausted):
    """A tenant over one of its quotas; `quota` names it (the refusal metric's reason)."""

    def __init__(self, quota: str, message: str, retry_after_s: float | None) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.quota = quota
