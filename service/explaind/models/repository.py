"""The model catalogue: one folder per model under a root, each holding model.onnx and model.yaml.

:class:`ModelRepository` scans the root, loads every model folder and looks models up by name. A
model is either a :class:`LoadedModel`, ready to serve with everything resolved, or a
:class:`FailedModel` that says why it is not: a bad model never stops the others, and its reason
says what to fix. A model name from a request is only ever a dictionary key, never part of a path.

Loading one folder runs the other modules in order: ``files`` (safe, size-limited reads inside the
folder), ``onnx_checks`` (standard domains and opset, external data, the ONNX checker, an
onnxruntime session) and ``signature`` (the input and output against model.yaml).

A loaded model keeps its weights once, in its ModelProto: the engine composes each variant's graph
from that proto and serializes the composed graph for its session. The serialized bytes that the
checks need while loading are not kept.

The catalogue is live. Every load records the files it read (a :class:`FolderState`: model.onnx,
model.yaml, labels file, background, external data, each with its inode, size, mtime and ctime, and
a sha256 over their contents). :meth:`ModelRepository.survey` compares the disk with those records
by stat calls alone; :meth:`ModelRepository.refresh` hashes the files only when a stat changed, so a
touched or identically re-copied folder is not reloaded. Each load is a new version (``version``, a
number that only grows, and ``loaded_at``) loaded beside the one in service: :meth:`install` swaps
it in, or, when it failed, keeps the old version serving and remembers why (:meth:`note`).
:class:`UnloadedModel` is a model taken out of service by UnloadModel. These are synchronous steps;
when to take them, off the event loop and one load at a time, is ``models.live``.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import logging
import os
import re
import stat
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar, TypeAlias

import onnx

from explaind.errors import ModelConfigError, NotFound, echo
from explaind.models.config import ModelConfig, UnsafePath, resolve_in_folder
from explaind.models.files import CONFIG_FILE, MODEL_FILE, load_external_data, read_config, read_model_file
from explaind.models.onnx_checks import (
    check_domains,
    check_external_data_loaded,
    check_opset,
    check_session,
    check_with_onnx_checker,
    external_data_bytes,
    external_locations,
    parse_model,
    uses_external_data,
)
from explaind.models.signature import Signature, infer_shapes, inspect_signature
from explaind.models.text import clip, first_line, human_bytes

log = logging.getLogger(__name__)

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_MODEL_NAME_RE = re.compile(MODEL_NAME_PATTERN)

READY = "READY"
FAILED = "FAILED"
UNLOADED = "UNLOADED"
UNLOADED_REASON = "unloaded by UnloadModel; LoadModel serves it again"

_MAX_REASON_CHARS = 600


def is_valid_model_name(name: object) -> bool:
    """True for names usable as a model folder name and in requests.

    ``fullmatch`` rather than ``match``: ``$`` would also accept a trailing newline.
    """
    return isinstance(name, str) and _MODEL_NAME_RE.fullmatch(name) is not None


@dataclass(frozen=True)
class RepositoryLimits:
    """What the repository is willing to load; the defaults suit a typical deployment."""

    max_model_bytes: int = 1 << 30
    allowed_domains: frozenset[str] = frozenset({"", "ai.onnx", "ai.onnx.ml"})
    check_with_session: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.max_model_bytes, int) or self.max_model_bytes <= 0:
            raise ValueError(f"max_model_bytes: expected a positive integer, got {self.max_model_bytes!r}")


@dataclass(frozen=True, eq=False, kw_only=True)
class LoadedModel(Signature):
    """A model that passed every check, with everything resolved: ready to serve.

    Its input and output side is the Signature it extends. ``model`` holds the weights (external
    data already read in); it is the only copy this entry keeps.
    """

    ready: ClassVar[bool] = True
    status: ClassVar[str] = READY
    reason: ClassVar[str] = ""

    name: str
    folder: Path
    config: ModelConfig
    model: onnx.ModelProto = field(repr=False)
    sha256: str
    version: int = 0          # this load of the folder; a reload is a higher number (caches key on it)
    loaded_at: float = 0.0    # when it was loaded, seconds since the epoch

    @property
    def kind(self) -> str:
        """The model's kind from model.yaml: "image" or "tabular"."""
        return self.config.kind

    def label_index(self, label: str) -> int:
        """Class index of ``label``; with duplicate labels the first one wins."""
        for i, known in enumerate(self.labels):
            if known == label:
                return i
        shown = ", ".join(self.labels[:20])
        if len(self.labels) > 20:
            shown += f", ... ({len(self.labels) - 20} more)"
        raise NotFound(f"model '{self.name}' has no label {echo(label)}; valid labels: {shown}")


@dataclass(frozen=True)
class FailedModel:
    """A model folder that cannot be served, and why.

    ``sha256`` (of model.onnx) and ``kind`` (from model.yaml) are what was learned before the
    failure: empty when the file was never read or model.yaml never parsed.
    """

    ready: ClassVar[bool] = False
    status: ClassVar[str] = FAILED

    name: str
    folder: Path
    reason: str
    sha256: str = ""
    kind: str = ""


@dataclass(frozen=True)
class UnloadedModel:
    """A model taken out of service by UnloadModel: listed, not served, not reloaded by the poller.

    ``sha256`` and ``kind`` are those of the version that was unloaded (empty when the folder was
    never loaded, e.g. one that reappeared on disk after its model was unloaded).
    """

    ready: ClassVar[bool] = False
    status: ClassVar[str] = UNLOADED

    name: str
    folder: Path
    reason: str = UNLOADED_REASON
    sha256: str = ""
    kind: str = ""


ModelEntry: TypeAlias = LoadedModel | FailedModel | UnloadedModel

# The model folder itself among a FolderState's files: its stats change when an entry is added,
# removed or renamed in it; it has no bytes of its own for the digest.
FOLDER = "."

# A file as a survey sees it: (inode, size, mtime_ns, ctime_ns); None when missing or unreachable.
# The ctime changes on every write and rename, so even a copy that keeps the mtime is noticed.
Stat: TypeAlias = tuple[int, int, int, int] | None


@dataclass(frozen=True)
class FolderState:
    """The files one load of a folder read (and the folder, FOLDER), their stats before it read them
    and a digest of their bytes.

    ``stats`` is empty when a file changed while it was read (the next survey then reloads it);
    ``digest`` is empty when the contents could not be hashed (then only a load can tell).
    """

    files: tuple[str, ...] = ()
    stats: tuple[Stat, ...] = ()
    digest: str = ""

    def changed(self, folder: Path) -> bool:
        return file_stats(folder, self.files) != self.stats


@dataclass(frozen=True)
class Loaded:
    """One load of a folder: its entry (loaded or failed) and what it read."""

    entry: LoadedModel | FailedModel
    state: FolderState


@dataclass(frozen=True)
class Survey:
    """How the disk differs from the catalogue (:meth:`ModelRepository.survey`)."""

    added: dict[str, Path]       # model folders the catalogue does not list
    changed: dict[str, Path]     # listed folders whose files differ from their last load (by stat)
    removed: list[str]           # listed names whose folder is gone (or holds no model.onnx any more)
    reappeared: dict[str, Path]  # unloaded names whose folder is back: listed UNLOADED, not loaded

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed or self.reappeared)


@dataclass(frozen=True)
class _Slot:
    """A catalogue entry, what its last load read, and a newer version that failed while it serves."""

    entry: ModelEntry
    state: FolderState = FolderState()
    failure: FailedModel | None = None


class ModelRepository:
    """All models under one root folder, loaded by :meth:`scan`, kept live by ``models.live``.

    Reads (get, list, survey) never change the catalogue, so survey may run in a worker thread;
    the changes (install, keep, remove, unload) run on the event loop, one at a time.
    """

    def __init__(self, root: Path, limits: RepositoryLimits = RepositoryLimits()) -> None:
        self._root = Path(root)
        self._limits = limits
        self._slots: dict[str, _Slot] = {}
        # Folders whose name cannot be a model name, listed FAILED (replaced whole by each survey).
        self._invalid: dict[str, FailedModel] = {}
        self._unloaded: set[str] = set()  # names UnloadModel took out, until LoadModel names them
        self._versions = itertools.count(1)

    @property
    def root(self) -> Path:
        return self._root

    @property
    def limits(self) -> RepositoryLimits:
        return self._limits

    def scan(self) -> None:
        """Load every model folder now, one after the other; the new set replaces the old one in one step.

        The server's start. Raises NotADirectoryError only when the root itself is missing: that is a
        server misconfiguration, not a bad model.
        """
        slots: dict[str, _Slot] = {}
        for name, folder in self.model_folders().items():
            if name in self._unloaded:
                slots[name] = _Slot(UnloadedModel(name, folder))
                continue
            loaded = self.load(name, folder)
            if isinstance(loaded.entry, FailedModel):
                log.warning("model %s FAILED: %s", name, loaded.entry.reason)
            slots[name] = _Slot(loaded.entry, loaded.state)
        self._slots = slots

    def model_folders(self) -> dict[str, Path]:
        """The model folders on disk now, by name: sub-folders holding a model.onnx, hidden ones skipped.

        Folders with an invalid name are left out of it and listed FAILED (logged once).
        """
        if not self._root.is_dir():
            raise NotADirectoryError(f"model repository {self._root} is not a directory")
        folders: dict[str, Path] = {}
        invalid: dict[str, FailedModel] = {}
        for child in sorted(self._root.iterdir()):
            name = child.name
            if name.startswith(".") or not child.is_dir():
                continue
            if not os.path.lexists(child / MODEL_FILE):
                continue
            if not is_valid_model_name(name):
                entry = invalid_name_entry(name, child)
                if entry.name not in self._invalid:
                    log.warning("model %s FAILED: %s", entry.name, entry.reason)
                invalid[entry.name] = entry
                continue
            folders[name] = child
        self._invalid = invalid  # one reference swap: readers see the old or the new set
        return folders

    def list(self) -> list[ModelEntry]:
        entries = {name: slot.entry for name, slot in self._slots.items()} | self._invalid
        return [entries[name] for name in sorted(entries)]

    def get(self, name: str) -> ModelEntry:
        """The entry named ``name`` (loaded, failed or unloaded); NotFound for anything else."""
        invalid = self._invalid.get(name) if isinstance(name, str) else None
        if invalid is not None:  # a folder listed FAILED for its name is found under that name too
            return invalid
        if not is_valid_model_name(name):
            raise NotFound(f"model {echo(str(name))} not found: not a valid model name")
        slot = self._slots.get(name)
        if slot is None:
            names = sorted(self._slots)
            shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            raise NotFound(f"model {echo(name)} not found; available models: {shown or '(none)'}")
        return slot.entry

    def note(self, name: str) -> str:
        """Why the version in service is not the folder's newest ("" when it is): a reload that failed."""
        slot = self._slots.get(name)
        if slot is None or slot.failure is None or not isinstance(slot.entry, LoadedModel):
            return ""
        serving = slot.entry
        return clip(f"the folder changed and its new version failed to load, so the version loaded at "
                    f"{_when(serving.loaded_at)} (sha256 {serving.sha256[:12]}) keeps serving: "
                    f"{slot.failure.reason}", _MAX_REASON_CHARS)

    # Keeping the catalogue in step with the disk -------------------------------------------------

    def model_folder(self, name: str) -> Path:
        """The folder LoadModel would load for ``name``; NotFound when there is no such model folder."""
        if not is_valid_model_name(name):
            raise NotFound(f"model {echo(str(name))} not found: not a valid model name")
        folder = self._root / name
        if not folder.is_dir() or not os.path.lexists(folder / MODEL_FILE):
            raise NotFound(f"model {name!r} not found: the repository has no folder {name}/ holding a {MODEL_FILE}")
        return folder

    def survey(self) -> Survey:
        """How the disk differs from the catalogue, by directory listings and stat calls alone."""
        folders = self.model_folders()
        slots = dict(self._slots)
        unloaded = set(self._unloaded)
        added = {n: f for n, f in folders.items() if n not in slots and n not in unloaded}
        reappeared = {n: f for n, f in folders.items() if n not in slots and n in unloaded}
        removed = [n for n in slots if n not in folders]
        changed = {n: folders[n] for n, slot in slots.items()
                   if n in folders and not isinstance(slot.entry, UnloadedModel) and slot.state.changed(folders[n])}
        return Survey(added, changed, removed, reappeared)

    def is_unloaded(self, name: str) -> bool:
        return name in self._unloaded

    def load(self, name: str, folder: Path) -> Loaded:
        """Load one folder as a new version (not yet in the catalogue: :meth:`install` puts it there)."""
        return load_folder(name, folder, self._limits, next(self._versions))

    def refresh(self, name: str, folder: Path) -> Loaded | FolderState:
        """A folder whose stats changed: when its files hold the same bytes as at its last load (a touch,
        an identical copy) the new FolderState, to keep what serves without reloading; else a new load."""
        slot = self._slots.get(name)
        if slot is not None and slot.state.stats and not slot.state.changed(folder):
            return slot.state  # already in step (LoadModel came between the survey and now)
        if slot is not None and slot.state.digest:
            files = slot.state.files
            stats = file_stats(folder, files)
            if content_digest(folder, files, self._limits.max_model_bytes) == slot.state.digest \
                    and file_stats(folder, files) == stats:
                return FolderState(files, stats, slot.state.digest)
        return self.load(name, folder)

    def install(self, loaded: Loaded) -> LoadedModel | None:
        """Put a load in the catalogue; returns the version it took out of service, if any.

        A failed load of a folder whose earlier version is loaded keeps that version serving and
        remembers the failure (:meth:`note`). Installing ends an UnloadModel of the name.
        """
        name = loaded.entry.name
        self._unloaded.discard(name)
        slot = self._slots.get(name)
        serving = slot.entry if slot is not None and isinstance(slot.entry, LoadedModel) else None
        if isinstance(loaded.entry, FailedModel) and serving is not None:
            self._slots[name] = _Slot(serving, loaded.state, failure=loaded.entry)
            return None
        self._slots[name] = _Slot(loaded.entry, loaded.state)
        return serving

    def keep(self, name: str, state: FolderState) -> None:
        """The folder changed on disk but not in content: remember its new stats, keep what serves."""
        slot = self._slots.get(name)
        if slot is not None and not isinstance(slot.entry, UnloadedModel):
            self._slots[name] = _Slot(slot.entry, state, slot.failure)

    def remove(self, name: str) -> LoadedModel | None:
        """Forget a model whose folder is gone; returns the version that served, if any."""
        slot = self._slots.pop(name, None)
        return slot.entry if slot is not None and isinstance(slot.entry, LoadedModel) else None

    def unload(self, name: str) -> LoadedModel | None:
        """Take ``name`` out of service until it is installed again; returns the version that served."""
        entry = self.get(name)
        self._unloaded.add(name)
        if isinstance(entry, UnloadedModel):
            return None
        self._slots[name] = _Slot(UnloadedModel(name, entry.folder, sha256=entry.sha256, kind=entry.kind))
        return entry if isinstance(entry, LoadedModel) else None

    def list_unloaded(self, name: str, folder: Path) -> None:
        """An unloaded name whose folder reappeared: listed UNLOADED, not loaded."""
        if name in self._unloaded and name not in self._slots:
            self._slots[name] = _Slot(UnloadedModel(name, folder))


def _when(epoch_seconds: float) -> str:
    return datetime.datetime.fromtimestamp(epoch_seconds, datetime.timezone.utc).isoformat(timespec="seconds")


def file_stats(folder: Path, files: tuple[str, ...]) -> tuple[Stat, ...]:
    return tuple(file_stat(folder, rel) for rel in files)


def file_stat(folder: Path, rel: str) -> Stat:
    """``rel``'s (inode, size, mtime_ns, ctime_ns), None when it is missing or not inside the folder."""
    try:
        st = os.stat(resolve_in_folder(folder, rel, must_exist=False))
    except (OSError, RuntimeError, UnsafePath):  # RuntimeError: a symlink loop
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


_CHUNK = 1 << 20


def content_digest(folder: Path, files: tuple[str, ...], limit: int) -> str:
    """sha256 over the names and bytes of ``files``; "" when one is missing, not a regular file inside
    the folder, or over ``limit`` bytes (then only a load can tell what changed)."""
    digest = hashlib.sha256()
    for rel in files:
        if rel == FOLDER:
            continue
        try:
            path = resolve_in_folder(folder, rel)
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO swapped in never blocks
        except (OSError, RuntimeError, UnsafePath):
            return ""
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
                return ""
            digest.update(rel.encode("utf-8", "surrogateescape") + b"\0" + st.st_size.to_bytes(8, "little"))
            read = 0
            while chunk := f.read(_CHUNK):
                read += len(chunk)
                if read > limit:
                    return ""
                digest.update(chunk)
    return digest.hexdigest()


def invalid_name_entry(name: str, folder: Path) -> FailedModel:
    """A model folder whose name cannot be a model name, listed FAILED with the rule it breaks.

    Listed under its name as-is when that is printable UTF-8 (spaces, accents), else as ascii() spells
    it, so that ListModels can always send it.
    """
    def show(text: str) -> str:
        try:
            text.encode("utf-8")  # undecodable bytes of the file name come as lone surrogates
        except UnicodeEncodeError:
            return ascii(text)[1:-1]
        return text if text.isprintable() else ascii(text)[1:-1]

    bad = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c in "._-"))})
    if bad:
        why = "it contains " + ", ".join(repr(show(c)) for c in bad[:10]) + (" and more" if len(bad) > 10 else "")
    elif not name[:1].isalnum():
        why = f"it starts with {show(name[:1])!r}"
    else:
        why = f"it is {len(name)} characters long"
    return FailedModel(name=show(name), folder=folder, reason=(
        f"the folder name is not a valid model name ({why}): a model name is 1 to 128 characters of A-Z, "
        "a-z, 0-9, '.', '_' and '-', starting with a letter or a digit; rename the folder to serve it"))


@dataclass
class _Learned:
    """What loading found out before it failed (for the FailedModel) and the files it read, each with
    its stat from before it was read (for the FolderState)."""

    folder: Path
    sha256: str = ""
    kind: str = ""
    files: dict[str, Stat] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reading(FOLDER)

    def reading(self, *files: str | None) -> None:
        for rel in files:
            if rel:
                self.files.setdefault(rel, file_stat(self.folder, rel))


def load_model_folder(name: str, folder: Path, limits: RepositoryLimits) -> ModelEntry:
    """Load and validate one model folder; never raises, a problem becomes a FailedModel."""
    return load_folder(name, folder, limits).entry


def load_folder(name: str, folder: Path, limits: RepositoryLimits, version: int = 0) -> Loaded:
    """Load one model folder as ``version``, with the FolderState of what it read; never raises."""
    learned = _Learned(folder)
    entry: LoadedModel | FailedModel
    try:
        entry = _load(name, folder, limits, learned, version)
    except ModelConfigError as exc:
        entry = _failed(name, folder, str(exc), learned)
    except Exception as exc:  # a bad model must not take the repository down
        entry = _failed(name, folder, f"unexpected error while loading: {type(exc).__name__}: "
                        f"{first_line(str(exc))}", learned)
    files = tuple(learned.files)
    # A failed load may not have learned every file it needs (model.yaml names a background that is
    # missing): no digest, so any change in the folder, even just a file added, is retried.
    digest = content_digest(folder, files, limits.max_model_bytes) if isinstance(entry, LoadedModel) else ""
    stats = file_stats(folder, files)
    if stats != tuple(learned.files.values()):  # a file changed while it was read: survey reloads it
        return Loaded(entry, FolderState(files))
    return Loaded(entry, FolderState(files, stats, digest))


def _failed(name: str, folder: Path, reason: str, learned: _Learned) -> FailedModel:
    return FailedModel(name=name, folder=folder, reason=clip(reason, _MAX_REASON_CHARS),
                       sha256=learned.sha256, kind=learned.kind)


def _load(name: str, folder: Path, limits: RepositoryLimits, learned: _Learned, version: int) -> LoadedModel:
    learned.reading(MODEL_FILE, CONFIG_FILE)
    raw = read_model_file(folder, limits.max_model_bytes)
    learned.sha256 = hashlib.sha256(raw).hexdigest()
    config = read_config(folder)
    learned.kind = config.kind
    learned.reading(config.labels_file, config.background, config.generator)

    model = parse_model(raw)
    check_domains(model, limits.allowed_domains)  # before reading any external data
    check_opset(model)
    # Watched even when missing, so adding one triggers a reload; a stat never leaves the folder.
    learned.reading(*external_locations(model))
    external_bytes = external_data_bytes(model, folder)
    total = len(raw) + external_bytes
    if external_bytes and total > limits.max_model_bytes:
        raise ModelConfigError(
            f"model.onnx with its external data is {human_bytes(total)}, "
            f"over the limit of {human_bytes(limits.max_model_bytes)}"
        )
    if external_bytes or uses_external_data(model):
        load_external_data(model, folder)
        check_external_data_loaded(model)
        serialized = model.SerializeToString()
    else:
        serialized = raw
    # `serialized` is the model as bytes for the checks below, serialized at most once; it goes
    # when this function returns, so the loaded model holds its weights once, in `model`.
    del raw

    check_with_onnx_checker(serialized)
    signature = inspect_signature(infer_shapes(serialized, model).graph, config, folder, limits.max_model_bytes)
    if limits.check_with_session:
        check_session(serialized)

    return LoadedModel(
        name=name,
        folder=folder,
        config=config,
        model=model,
        sha256=learned.sha256,
        **{f.name: getattr(signature, f.name) for f in fields(Signature)},
        version=version,
        loaded_at=time.time(),
    )


__all__ = [
    "FAILED",
    "MODEL_NAME_PATTERN",
    "READY",
    "UNLOADED",
    "FailedModel",
    "FolderState",
    "Loaded",
    "LoadedModel",
    "ModelEntry",
    "ModelRepository",
    "RepositoryLimits",
    "Survey",
    "UnloadedModel",
    "content_digest",
    "file_stats",
    "invalid_name_entry",
    "is_valid_model_name",
    "load_folder",
    "load_model_folder",
]
