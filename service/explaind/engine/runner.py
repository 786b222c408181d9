"""Runners: onnxruntime sessions that execute one batch at a time, off the event loop.

Each device has one worker thread (`Device.queue`, smallest requests first); every scheduler on that
device submits its batches there, so batches of different variants take turns instead of fighting
over cores, and onnxruntime (which releases the GIL) leaves the event loop free to form the next batch.
With CUDA the runner binds inputs and outputs through IOBinding and keeps per-job constants
resident on the device while the same jobs keep sharing batches.

A run that fails in onnxruntime is told apart by where it failed: an allocation failure (over
`max_session_memory_bytes`, or over what the machine has) becomes RESOURCE_EXHAUSTED; a failure in
one of the user's model's own nodes is the model's fault on that input, a ModelRunError (INTERNAL);
a failure in a node explaind added (every one is named under its namespace, "explaind::": the
variant's prefix and suffix, derived gradients) or one onnxruntime traces to no node (the feed:
shapes and types explaind gave its own graph) is explaind's bug, an ExplaindBug (INTERNAL, said to
be explaind's). Each names the model, the variant and the node, without onnxruntime's C++ source
paths. Every run feeds the model's health (`engine.health`), which GetModel reports; explaind's own
bugs do not count against the model.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..config import Settings
from ..errors import ExplaindBug, ModelRunError, ResourceExhausted
from ..logs import BurstLog
from ..onnxgraph.builder import NAMESPACE
from .device import DeviceQueue, in_lowered_thread
from .health import ModelHealth

log = logging.getLogger(__name__)


@dataclass
class Device:
    """Where sessions run: "cpu" or "cuda", with the single thread that feeds it."""

    kind: str
    queue: DeviceQueue
    device_id: int = 0

    memory_limit: int = 0  # bytes a CUDA session's arena may hold (gpu_mem_limit); 0: onnxruntime's default

    @property
    def providers(self) -> list[str | tuple[str, dict[str, object]]]:
        if self.kind == "cuda":
            options: dict[str, object] = {"device_id": self.device_id}
            if self.memory_limit > 0:
                options["gpu_mem_limit"] = self.memory_limit
            return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]


def choose_device(settings: Settings) -> Device:
    available = ort.get_available_providers()
    if settings.providers == "cuda" and "CUDAExecutionProvider" not in available:
        raise RuntimeError(f"providers=cuda but onnxruntime offers only {available}; install the gpu extra")
    kind = "cuda" if settings.providers != "cpu" and "CUDAExecutionProvider" in available else "cpu"
    # CUDA: only an explicit cap (onnxruntime's default is the whole device); auto sizes CPU memory only.
    limit = settings.max_session_memory_bytes if kind == "cuda" and settings.max_session_memory_bytes > 0 else 0
    return Device(kind, DeviceQueue(f"explaind-{kind}", settings.compute_nice), memory_limit=limit)


def available_memory() -> int:
    """Bytes of memory this process may use: a cgroup v2 limit (containers) or else physical memory."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            total = min(total, int(limit))
    except (OSError, ValueError):
        pass
    return total


def cpu_memory_cap(settings: Settings) -> int:
    """The shared CPU arena's max_mem for `max_session_memory_bytes`: 0 (auto) is half of
    `available_memory()`, -1 no cap (returned as 0, onnxruntime's "default": unlimited)."""
    if settings.max_session_memory_bytes < 0:
        return 0
    return settings.max_session_memory_bytes or available_memory() // 2


_SHARED_ARENA: list[int] = []  # onnxruntime's environment is per process: its arena is registered once


def share_cpu_arena(max_bytes: int = 0) -> None:
    """Register one CPU arena in onnxruntime's (process-wide) environment for sessions to share.

    Each session otherwise keeps its own arena at the peak of its largest batch: with dozens of cached
    variants (distinct RISE grids, extremal geometries...) that is hundreds of MB held by idle sessions.
    Batches run one at a time on the device thread, so one arena sized by the largest batch serves all.
    `max_bytes` (0: no cap) is the arena's max_mem: an allocation beyond it fails the run ("Available
    memory of ... is smaller than requested bytes of ...") instead of taking the machine's memory. It
    holds run-time allocations only (onnxruntime keeps initializers outside it: measured, a 100 MB
    weight loads under a 50 MB cap). Being process-wide, the first registration's cap stays.
    """
    if not _SHARED_ARENA:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        # Other fields at onnxruntime's defaults (-1): grow by powers of two, clamped to what max_mem leaves.
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(max_bytes, -1, -1, -1))
        _SHARED_ARENA.append(max_bytes)
    elif _SHARED_ARENA[0] != max_bytes:
        log.warning("the shared onnxruntime arena was registered with another cap; keeping it",
                    extra={"max_session_memory_bytes": _SHARED_ARENA[0], "asked": max_bytes})


class ArenaRelease:
    """Gives the shared CPU arena's free regions back to the system: on the run after an eviction, and on
    the first run after `interval_s` seconds since the last release.

    onnxruntime's arena keeps every region it ever grew to. With variants built and evicted all day
    (each geometry its own activation sizes) it ratchets up: 800 requests with distinct parameter values
    took a server from 412 to 879 MB; shrinking once after an eviction bounds that. Without evictions a
    mixed load ratchets it too, each new mix of concurrent batches a new peak: 1,600 in-process requests
    of 8 methods, 6 concurrent, 299 -> 395 MB (the arena's mmapped regions 120 -> 248 MB); releasing every
    5 s, 300 -> 293 MB. Shrinking after every run would also bound it but re-allocates each batch's
    buffers (RISE 1.57x slower); once per interval costs one re-allocation per interval.
    """

    def __init__(self, interval_s: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._pending = False  # set on the event loop, read on the device thread: a lost race only delays it
        self._interval_s = interval_s
        self._clock = clock
        self._last = clock()

    def request(self) -> None:
        self._pending = True

    def run_options(self) -> ort.RunOptions | None:
        now = self._clock()
        due = self._interval_s > 0 and now - self._last >= self._interval_s
        if not (self._pending or due):
            return None
        self._pending = False
        self._last = now
        options = ort.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        return options


def session_options(settings: Settings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    if settings.shared_arena:
        share_cpu_arena(cpu_memory_cap(settings))
        options.add_session_config_entry("session.use_env_allocators", "1")
    options.intra_op_num_threads = settings.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 4  # a failed run is raised, mapped and logged once by explaind, not printed here
    # "run" by default: threads spin between a run's operators (~5% faster for a small CNN on 2 cores) and
    # stop when it returns. Spinning threads at the server's own priority took the cores the event loop
    # needs between batches (no gain through gRPC); at compute_nice 5 they yield to it: bench.py,
    # 2026-11-26, 1-client RISE ratio median 0.873 over 10 pairs (0.848 sleeping at equal priority).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0" if settings.spin == "off" else "1")
    if settings.spin == "run":
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


class Runner:
    """One variant's session. `run` is called from the device thread only.

    Feeds and outputs are named as the variant's interface names them; in the graph they carry
    explaind's namespace so they cannot collide with the model's own tensor names.
    """

    def __init__(self, model_bytes: bytes, outputs: tuple[str, ...], constants: tuple[str, ...],
                 device: Device, settings: Settings, io_binding: bool | None = None,
                 arena: ArenaRelease | None = None, model: str = "", variant: str = "",
                 health: ModelHealth | None = None) -> None:
        # Created in a thread of lowered priority, so the session's intra-op pool inherits it.
        self.session = in_lowered_thread(lambda: ort.InferenceSession(
            model_bytes, sess_options=session_options(settings), providers=device.providers), settings.compute_nice)
        self.size_bytes = len(model_bytes)  # the graph's serialized size: the cache's measure of a session
        self.outputs = list(outputs)
        self._graph_outputs = [NAMESPACE + name for name in outputs]
        self.constants = constants
        self.device = device
        self.io_binding = device.kind == "cuda" if io_binding is None else io_binding
        # (name, job ids) -> OrtValue already on the device, for constants reused batch after batch.
        self._resident: dict[str, tuple[tuple[int, ...], ort.OrtValue]] = {}
        self.arena = arena
        self.model = model
        self.variant = variant
        self.health = health
        self._failures_log = BurstLog(log)  # a client can make a model fail on every batch
        self.memory_cap = (device.memory_limit if device.kind == "cuda"
                           else cpu_memory_cap(settings) if settings.shared_arena else 0)

    def run(self, feed: dict[str, np.ndarray], slot_ids: tuple[int, ...]) -> list[np.ndarray]:
        """The batch's outputs; a failure of onnxruntime is raised as ResourceExhausted or ModelRunError."""
        try:
            outputs = self._run(feed, slot_ids)
        except Exception as exc:  # onnxruntime's Fail, InvalidArgument, RuntimeException...; MemoryError
            error = run_error(exc, self.model, self.variant, self.memory_cap)
            self._failures_log.event("model run failed", model=self.model, variant=self.variant,
                                     code=error.code.name, reason=error.message)
            if self.health is not None and not isinstance(error, ExplaindBug):
                self.health.failed(self.model, error.message)
            raise error from None
        if self.health is not None:
            self.health.succeeded(self.model)
        return outputs

    def _run(self, feed: dict[str, np.ndarray], slot_ids: tuple[int, ...]) -> list[np.ndarray]:
        if not self.io_binding:
            options = self.arena.run_options() if self.arena else None
            return self.session.run(self._graph_outputs, {NAMESPACE + k: v for k, v in feed.items()}, options)
        binding = self.session.io_binding()
        for name, array in feed.items():
            if name in self.constants:
                binding.bind_ortvalue_input(NAMESPACE + name, self._resident_value(name, slot_ids, array))
            else:
                binding.bind_cpu_input(NAMESPACE + name, np.ascontiguousarray(array))
        for name in self._graph_outputs:
            binding.bind_output(name, self.device.kind, self.device.device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def timed_run(self, feed: dict[str, np.ndarray], slot_ids: tuple[int, ...]) -> tuple[list[np.ndarray], float]:
        """`run` and the seconds it took (measured where it runs, so queueing is not counted)."""
        started = time.perf_counter()
        outputs = self.run(feed, slot_ids)
        return outputs, time.perf_counter() - started

    def _resident_value(self, name: str, slot_ids: tuple[int, ...], array: np.ndarray) -> ort.OrtValue:
        cached = self._resident.get(name)
        if cached is not None and cached[0] == slot_ids:
            return cached[1]
        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device.kind, self.device.device_id)
        self._resident[name] = (slot_ids, value)
        return value


# onnxruntime's run-time errors ------------------------------------------------------------------------

# What onnxruntime (its CPU arena, CUDA, cuBLAS, cuDNN) and the C++ runtime say when memory runs out.
_ALLOCATION = re.compile(
    r"Failed to allocate memory|Available memory of \d+ is smaller than requested|bad_alloc|bad allocation|"
    r"out of memory|CUDA_ERROR_OUT_OF_MEMORY|cudaErrorMemoryAllocation|STATUS_ALLOC_FAILED|"
    r"RuntimeException.*allocat|allocat\w* failed", re.IGNORECASE)
_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
_NODE = re.compile(r"Non-zero status code returned while running (\S+) node\. Name:'([^']*)' Status Message: ")
# A C++ source location: /onnxruntime_src/.../bfc_arena.cc:360 (or D:\a\_work\...\x.cc:12), then usually
# the function's signature: `void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, ...)`.
_SOURCE = re.compile(r"(?:[A-Za-z]:)?[/\\][^\s:]*\.(?:h|hpp|hh|c|cc|cpp|cxx|cu|cuh|inc)\b(?::\d+)?\s*")
_TYPE_WORD = (r"(?:[\w<>,~]*(?:::|\*|&|<)[\w:<>,*&~]*|void|bool|int|char|float|double|const|static|virtual|"
              r"unsigned|long|size_t|auto|inline)")
_SIGNATURE = re.compile(rf"(?:{_TYPE_WORD}\s+){{0,3}}[*&]*[\w<>,~]*::[\w:<>,~]+\(")


def strip_source_paths(text: str) -> str:
    """onnxruntime's message without C++ source paths and the signatures that follow them."""
    out, at = [], 0
    for match in _SOURCE.finditer(text):
        if match.start() < at:
            continue
        out.append(text[at:match.start()])
        at = match.end()
        signature = _SIGNATURE.match(text, at)
        if signature is not None:  # skip to the signature's matching parenthesis
            depth, i = 1, signature.end()
            while i < len(text) and depth:
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            if depth == 0:
                at = i
                while at < len(text) and text[at] == " ":
                    at += 1
                if text.startswith("const ", at):
                    at += len("const ")
    out.append(text[at:])
    return " ".join("".join(out).split())


def failed_node(exc: BaseException) -> str | None:
    """The name of the node onnxruntime says failed (possibly ""), None when it names none."""
    node = _NODE.search(str(exc))
    return None if node is None else node.group(2)


def describe_ort_error(exc: BaseException) -> str:
    """One line: "ConstantOfShape node 'hungry': Failed to allocate ..." without source paths."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = _PREFIX.sub("", text)
    node = _NODE.search(text)
    if node is not None:
        text = f"{node.group(1)} node {node.group(2)!r}: {text[node.end():]}"
    return strip_source_paths(text)[:400]


def run_error(exc: BaseException, model: str, variant: str,
              memory_cap: int = 0) -> ResourceExhausted | ModelRunError | ExplaindBug:
    """The ExplaindError for a failed run: allocation failures are RESOURCE_EXHAUSTED; the rest INTERNAL,
    the model's fault when one of its own nodes failed, explaind's when one of explaind's nodes did or
    onnxruntime names no node (the feed explaind made for its own graph)."""
    detail = describe_ort_error(exc)
    where = f"model '{model}' ({variant} graph)"
    if isinstance(exc, MemoryError) or _ALLOCATION.search(str(exc)):
        cap = (f"the server's max_session_memory_bytes is {memory_cap} bytes ({memory_cap / 2**20:.0f} MiB)"
               if memory_cap > 0
               else "no max_session_memory_bytes cap is set")
        return ResourceExhausted(f"{where} needed more memory than it could get at run time ({detail}); {cap}: "
                                 "ask for fewer rows per request or a smaller input, or raise the cap")
    node = failed_node(exc)
    if node is None or node.startswith(NAMESPACE):
        part = ("a node explaind added to the model's graph" if node is not None
                else "explaind's input to its own graph (onnxruntime names no node of the model)")
        return ExplaindBug(f"explaind's {variant} graph of model '{model}' failed at run time in onnxruntime "
                           f"({detail}): {part} failed, so this is a bug of explaind, not a fault of the model; "
                           "please report it with the model and the request")
    return ModelRunError(f"{where} failed at run time in onnxruntime ({detail}); the model's own node failed: "
                         "this is a fault of the model on this input, not a bug of explaind")
