"""All of the server's configuration in one typed settings object.

Every field can be set by a command-line flag (``--max-batch-rows 64``) or an environment variable
(``EXPLAIND_MAX_BATCH_ROWS=64``); a flag wins over the environment, the environment over the default.
"""

from __future__ import annotations

import argparse
import functools
import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .tenants import load_policies

ENV_PREFIX = "EXPLAIND_"


@dataclass(frozen=True)
class Settings:
    host: str = field(default="127.0.0.1", metadata={
        "help": "address the gRPC server listens on (0.0.0.0: every interface, as the container images set)"})
    port: int = field(default=50051, metadata={"help": "gRPC port (0 picks a free one)"})
    metrics_port: int = field(default=9090, metadata={"help": "Prometheus /metrics port, -1 to disable"})
    metrics_host: str = field(default="127.0.0.1", metadata={"help": "address the /metrics port listens on"})
    tls_cert: str = field(default="", metadata={
        "help": "PEM certificate chain of the server: TLS on the gRPC port (with tls_key); empty: plaintext"})
    tls_key: str = field(default="", metadata={"help": "PEM private key of tls_cert"})
    tls_client_ca: str = field(default="", metadata={
        "help": "PEM CA certificates: clients must present a certificate signed by one of them (mTLS); "
                "needs tls_cert and tls_key"})
    auth_tokens: str = field(default="", metadata={
        "help": "file of 'TENANT TOKEN' lines (# comments): every Explainer call needs metadata "
                "'authorization: Bearer TOKEN'; reloaded when the file changes; empty: no authentication"})
    admin_tenants: str = field(default="", metadata={
        "help": "comma-separated tenants (of auth_tokens) allowed to call LoadModel and UnloadModel; "
                "without auth_tokens every caller may"})
    reflection: bool = field(default=True, metadata={"help": "serve gRPC reflection (v1 and v1alpha)"})
    health_port: int = field(default=-1, metadata={
        "help": "a second, plaintext port serving only grpc.health.v1 (for Kubernetes gRPC probes, which "
                "cannot speak TLS); -1: off, 0 picks a free one"})
    http_port: int = field(default=-1, metadata={
        "help": "HTTP/JSON gateway port (KServe v1 explain, server-sent events, OpenAPI at /openapi.json, "
                "the web page at /), on host, with the gRPC port's TLS and auth; -1: off, 0 picks a free one"})
    http_max_instances: int = field(default=64, metadata={
        "help": "most instances in one KServe-style explain body (each is one ExplainRequest)"})
    repository: str = field(default="", metadata={"help": "model repository folder; empty: the bundled demo"})
    repository_poll_s: float = field(default=10.0, metadata={
        "help": "seconds between checks of the repository for added, changed and removed model folders "
                "(a changed model is loaded beside the old one); 0: no polling (LoadModel only)"})
    providers: str = field(default="auto", metadata={"help": "auto | cpu | cuda (auto: CUDA when onnxruntime has it)"})
    intra_op_threads: int = field(default=0, metadata={"help": "onnxruntime CPU threads per session, 0: all cores"})
    spin: str = field(default="run", metadata={"help": "onnxruntime threads spin: run (default: between a batch's "
                                                "operators, stopping when it returns) | off (they sleep) | always"})
    compute_nice: int = field(default=5, metadata={
        "help": "niceness added to the onnxruntime threads (the device thread and each session's pool; Linux), "
                "so the event loop, gRPC and health checks preempt them; 0: same priority as the server"})
    blas_threads: int = field(default=1, metadata={
        "help": "threads of numpy's BLAS in the server process (its idle workers busy-wait and take the cores "
                "onnxruntime needs; the server's own numpy work is small); 0: the library's default"})
    max_batch_rows: int = field(default=64, metadata={"help": "rows per engine batch (model.yaml may override)"})
    batch_tuning_s: float = field(default=0.0, metadata={
        "help": "seconds of measurement per candidate batch size when a variant's session is built "
                "(candidates: max_batch_rows and its halvings down to an eighth); the variant then batches "
                "at the fastest measured (max_batch_rows unless another is over 5% faster); 0: off, every variant "
                "batches at max_batch_rows"})
    max_delay_ms: float = field(default=2.0, metadata={"help": "longest wait for a batch to fill"})
    max_queued_rows: int = field(default=2_000_000, metadata={"help": "rows queued in the engine before refusing"})
    max_queued_jobs: int = field(default=512, metadata={"help": "jobs queued in the engine before refusing"})
    admit_by_deadline: bool = field(default=True, metadata={
        "help": "refuse at once (RESOURCE_EXHAUSTED with retry-after-ms) a request that cannot finish "
                "before its deadline, from the measured time per row, and shed admitted work that no longer "
                "can; false: admit it and let it end DEADLINE_EXCEEDED (queue bounds and quotas still hold)"})
    tenants: str = field(default="", metadata={
        "help": "YAML file of tenant policies (priority interactive | batch, quotas rows_per_second and "
                "rows_in_flight; docs/admission.md); empty: every caller interactive, no quotas"})
    interactive_weight: float = field(default=4.0, metadata={
        "help": "device share of the interactive class against batch_weight while both have work"})
    batch_weight: float = field(default=1.0, metadata={
        "help": "device share of the batch class against interactive_weight while both have work"})
    max_rows_per_request: int = field(default=2_000_000, metadata={"help": "model evaluations one request may ask for"})
    max_request_memory_bytes: int = field(default=1 << 30, metadata={
        "help": "working memory one request may need (LIME / Kernel SHAP coalitions, rows and regression), "
                "computed before it starts; requests above are refused naming the parameter to lower"})
    max_sessions: int = field(default=32, metadata={
        "help": "onnxruntime sessions (graph variants) kept; beyond it the least recently used idle ones close"})
    max_session_bytes: int = field(default=4 << 30, metadata={
        "help": "bytes of variant graphs kept as sessions (their serialized size); beyond it the least recently "
                "used idle ones close"})
    shared_arena: bool = field(default=True, metadata={
        "help": "one onnxruntime CPU memory arena for all sessions instead of one each: batches run one at a "
                "time, so the arena is the largest batch's working memory, however many sessions are kept "
                "(measured: 36 sessions +131 MB instead of +807 MB, speed unchanged)"})
    arena_release_s: float = field(default=10.0, metadata={
        "help": "give the shared CPU arena's free regions back to the system on the first run after this many "
                "seconds (and after every session eviction): the arena otherwise stays at the largest batch "
                "mix it ever met, which a long mixed load keeps raising (soak RSS after warm-up: +25 percent without, "
                "flat with 10 s); one re-allocation per interval; 0: only after evictions"})
    tree_shap_cache_bytes: int = field(default=64 << 20, metadata={
        "help": "bytes of shap TreeExplainers tree_shap keeps prepared per model version (one per explained "
                "column and mode, the arrays they hold measured); beyond it the least recently used are dropped; "
                "0: none kept (each request prepares its own)"})
    tree_shap_preload: bool = field(default=False, metadata={
        "help": "prepare tree_shap's interventional explainers of every output column (both scores) when a "
                "tree model's version loads, before it serves (shap imported then): its first requests skip "
                "the ~1.5 s of shap's import and the preparation; within tree_shap_cache_bytes"})
    max_num_masks: int = field(default=100_000, metadata={"help": "largest RISE num_masks"})
    max_message_bytes: int = field(default=64 << 20, metadata={"help": "largest gRPC message accepted or sent"})
    max_image_bytes: int = field(default=32 << 20, metadata={"help": "largest encoded image"})
    max_image_pixels: int = field(default=4096 * 4096, metadata={"help": "largest decoded image, in pixels"})
    max_model_bytes: int = field(default=2 << 30, metadata={"help": "largest model.onnx plus external data"})
    max_session_memory_bytes: int = field(default=0, metadata={
        "help": "memory onnxruntime may allocate while running batches (activations, outputs); a batch that "
                "needs more fails with RESOURCE_EXHAUSTED instead of taking the machine's memory. CPU: the "
                "max_mem of the arena all sessions share (needs shared_arena; batches run one at a time, so "
                "it bounds one batch), 0: half of the memory the process may use (cgroup limit or RAM); "
                "CUDA: each session's gpu_mem_limit, 0: onnxruntime's default; -1: no cap"})
    grace_period_s: float = field(default=30.0, metadata={"help": "on SIGTERM, time for requests in flight"})
    partial_every: float = field(default=0.1, metadata={"help": "stream a partial map every this fraction"})
    partial_margin_ms: float = field(default=50.0, metadata={
        "help": "allow_partial: a sampling stage stops this long (plus its slowest batch fold) before the "
                "deadline, to finish and send the partial answer in time"})
    log_level: str = field(default="INFO", metadata={"help": "DEBUG | INFO | WARNING | ERROR"})
    log_format: str = field(default="json", metadata={"help": "json | text"})

    def validate(self) -> None:
        def positive(name: str) -> None:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

        for name in ("max_batch_rows", "max_queued_rows", "max_queued_jobs", "max_rows_per_request",
                     "max_request_memory_bytes", "max_num_masks", "max_message_bytes", "max_image_bytes",
                     "max_image_pixels", "max_model_bytes", "max_sessions", "max_session_bytes", "http_max_instances"):
            positive(name)
        if self.max_session_memory_bytes < -1:
            raise ValueError(f"max_session_memory_bytes must be -1 (no cap), 0 (auto) or a byte count, "
                             f"got {self.max_session_memory_bytes}")
        if self.tree_shap_cache_bytes < 0:
            raise ValueError(f"tree_shap_cache_bytes must be >= 0 (0: no cache), got {self.tree_shap_cache_bytes}")
        if self.arena_release_s < 0:
            raise ValueError(f"arena_release_s must be 0 (only after evictions) or a number of seconds, got {self.arena_release_s}")
        if not 0 <= self.batch_tuning_s <= 10:
            raise ValueError(f"batch_tuning_s must be in [0, 10] seconds, got {self.batch_tuning_s}")
        if self.max_delay_ms < 0 or self.grace_period_s < 0 or self.intra_op_threads < 0 or self.blas_threads < 0:
            raise ValueError("max_delay_ms, grace_period_s, intra_op_threads and blas_threads must be >= 0")
        if not (self.repository_poll_s == 0 or 0.05 <= self.repository_poll_s <= 86400):
            raise ValueError(f"repository_poll_s must be 0 (off) or in [0.05, 86400] seconds, got {self.repository_poll_s}")
        if not 0 <= self.compute_nice <= 19:
            raise ValueError(f"compute_nice must be in [0, 19], got {self.compute_nice}")
        if self.spin not in ("run", "always", "off"):
            raise ValueError(f"spin must be run, always or off, got {self.spin!r}")
        if not (self.interactive_weight > 0 and self.batch_weight > 0) or \
                not math.isfinite(self.interactive_weight + self.batch_weight):
            raise ValueError(f"interactive_weight and batch_weight must be positive, got "
                             f"{self.interactive_weight} and {self.batch_weight}")
        load_policies(self.tenants)  # the file is checked at startup (ValueError naming the key)
        if not 0 < self.partial_every <= 1:
            raise ValueError(f"partial_every must be in (0, 1], got {self.partial_every}")
        if self.partial_margin_ms < 0:
            raise ValueError(f"partial_margin_ms must be >= 0, got {self.partial_margin_ms}")
        if self.providers not in ("auto", "cpu", "cuda"):
            raise ValueError(f"providers must be auto, cpu or cuda, got {self.providers!r}")
        if self.log_format not in ("json", "text"):
            raise ValueError(f"log_format must be json or text, got {self.log_format!r}")
        self._validate_security()

    def _validate_security(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        for name in ("metrics_port", "health_port", "http_port"):
            if not -1 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name} must be in [-1, 65535] (-1: off), got {getattr(self, name)}")
        if self.health_port > 0 and self.health_port in (self.port, self.metrics_port):
            raise ValueError(f"health_port must differ from port and metrics_port, got {self.health_port}")
        if self.http_port > 0 and self.http_port in (self.port, self.metrics_port, self.health_port):
            raise ValueError(f"http_port must differ from port, metrics_port and health_port, got {self.http_port}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together: set both (TLS) or neither (plaintext)")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("tls_client_ca (mTLS) needs tls_cert and tls_key")
        if self.admin_tenants and not self.auth_tokens:
            raise ValueError("admin_tenants needs auth_tokens (without tokens every caller may control models)")
        for tenant in self.admin_tenant_names:
            if not tenant:
                raise ValueError(f"admin_tenants: expected comma-separated tenant names, got {self.admin_tenants!r}")

    @property
    def admin_tenant_names(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.admin_tenants.split(",")) if self.admin_tenants else frozenset()

    @property
    def repository_path(self) -> Path:
        if self.repository:
            return Path(self.repository)
        return Path(__file__).resolve().parent / "demo" / "repository"

    @property
    def threads(self) -> int:
        return self.intra_op_threads or available_cores()


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (containers)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def parse_setting(kind: type, raw: str) -> object:
    """A flag's or environment variable's text as the field's type (booleans: true/false, 1/0, yes/no)."""
    if kind is bool:
        text = raw.strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {raw!r}")
    return kind(raw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per settings field, defaulting to None so that unset flags fall through to the env."""
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        kind = type(f.default)
        convert = functools.partial(parse_setting, kind)
        convert.__name__ = kind.__name__  # type: ignore[attr-defined]  (argparse names it in errors)
        parser.add_argument(flag, type=convert, default=None, help=f"{f.metadata['help'].replace('%', '%%')} "
                            f"(env {ENV_PREFIX}{f.name.upper()}, default {f.default!r})")


def load_settings(args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from flags, then environment variables, then defaults; validated."""
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    for f in dataclasses.fields(Settings):
        kind = type(f.default)
        flag_value = getattr(args, f.name, None) if args is not None else None
        if flag_value is not None:
            values[f.name] = flag_value
        elif ENV_PREFIX + f.name.upper() in env:
            raw = env[ENV_PREFIX + f.name.upper()]
            try:
                values[f.name] = parse_setting(kind, raw)
            except ValueError:
                raise ValueError(f"{ENV_PREFIX}{f.name.upper()}: expected {kind.__name__}, got {raw!r}") from None
    settings = Settings(**values)  # type: ignore[arg-type]
    settings.validate()
    return settings
