"""A live repository: change detection (stats, then contents), versions, and the model control.

Real model folders (tiny ONNX models written by the test), a real ModelRepository; ModelControl
runs on a real event loop with the repository's loads in its worker threads.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from _linear import served_linear, settings
from _onnx_builders import tabular_model, write_model_folder
from explaind.engine import engine as engine_module
from explaind.engine.engine import Engine
from explaind.engine.job import Job
from explaind.errors import FailedPrecondition, NotFound
from explaind.models import FailedModel, LoadedModel, ModelRepository, RepositoryLimits
from explaind.models.live import ModelControl
from explaind.models.repository import FolderState, Loaded, UnloadedModel, content_digest
from explaind.onnxgraph.variants.predict import Predict

TABULAR_YAML = {"kind": "tabular", "labels": ["no", "yes"], "feature_names": ["a", "b", "c", "d"]}
WITH_BACKGROUND = {**TABULAR_YAML, "background": "background.npy"}


def _repo(root: Path) -> ModelRepository:
    repo = ModelRepository(root, RepositoryLimits())
    repo.scan()
    return repo


def _scaled(factor: float) -> onnx.ModelProto:
    """The tiny tabular model with its weights multiplied by ``factor``: same signature, new bytes."""
    model = tabular_model()
    weight = numpy_helper.to_array(model.graph.initializer[0]) * np.float32(factor)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight, "W"))
    return model


def _background(folder: Path, value: float) -> None:
    np.save(folder / "background.npy", np.full((3, 4), value, dtype=np.float32))


def _bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _reload(repo: ModelRepository, name: str) -> Loaded | FolderState:
    survey = repo.survey()
    assert name in survey.changed, survey
    return repo.refresh(name, survey.changed[name])


# Change detection ---------------------------------------------------------------------------------


def test_an_unchanged_repository_surveys_empty_and_records_what_each_load_read(tmp_path: Path) -> None:
    folder = write_model_folder(tmp_path, "t", tabular_model(), WITH_BACKGROUND)
    _background(folder, 0.5)
    repo = _repo(tmp_path)
    assert not repo.survey()
    state = repo._slots["t"].state
    assert state.files == (".", "model.onnx", "model.yaml", "background.npy")
    assert all(s is not None for s in state.stats)
    assert state.digest == content_digest(folder, state.files, 1 << 30) != ""


def test_a_touch_or_an_identical_copy_is_noticed_but_not_reloaded(tmp_path: Path) -> None:
    folder = write_model_folder(tmp_path, "t", tabular_model(), TABULAR_YAML)
    repo = _repo(tmp_path)
    before = repo.get("t")

    _bump_mtime(folder / "model.onnx")
    outcome = _reload(repo, "t")
    assert isinstance(outcome, FolderState)  # same bytes: no new version
    repo.keep("t", outcome)
    assert not repo.survey()

    copy = tmp_path / "copy.onnx"  # a deploy tool writing the same bytes anew: new inode, new ctime
    shutil.copy(folder / "model.onnx", copy)
    os.replace(copy, folder / "model.onnx")
    outcome = _reload(repo, "t")
    assert isinstance(outcome, FolderState)
    repo.keep("t", outcome)
    assert not repo.survey()
    assert repo.get("t") is before


@pytest.mark.parametrize("change", ["weights", "yaml", "background"])
def test_changed_bytes_in_any_file_the_load_read_make_a_new_version(tmp_path: Path, change: str) -> None:
    folder = write_model_folder(tmp_path, "t", tabular_model(), WITH_BACKGROUND)
    _background(folder, 0.5)
    repo = _repo(tmp_path)
    old = repo.get("t")
    assert isinstance(old, LoadedModel)
    if change == "weights":
        onnx.save_model(_scaled(3.0), str(folder / "model.onnx"))
    elif change == "yaml":
        write_model_folder(tmp_path, "t", None, {**WITH_BACKGROUND, "labels": ["low", "high"]})
    else:
        _background(folder, 0.25)
    outcome = _reload(repo, "t")
    assert isinstance(outcome, Loaded) and isinstance(outcome.entry, LoadedModel)
    new = outcome.entry
    assert new.version > old.version and new.loaded_at >= old.loaded_at
    assert (new.sha256 != old.sha256) == (change == "weights")
    assert repo.install(outcome) is old  # the version taken out of service, for the caller to retire
    assert repo.get("t") is new
    if change == "yaml":
        assert new.labels == ("low", "high")
    if change == "background":
        assert float(new.background[0, 0]) == 0.25
    assert not repo.survey()


def test_external_data_is_watched(tmp_path: Path) -> None:
    folder = write_model_folder(tmp_path, "t", tabular_model(), TABULAR_YAML, external_data=True)
    repo = _repo(tmp_path)
    old = repo.get("t")
    assert "weights.bin" in repo._slots["t"].state.files
    raw = bytearray((folder / "weights.bin").read_bytes())
    raw[:4] = np.float32(7.0).tobytes()
    (folder / "weights.bin").write_bytes(bytes(raw))
    outcome = _reload(repo, "t")
    assert isinstance(outcome, Loaded) and isinstance(outcome.entry, LoadedModel)
    assert outcome.entry.sha256 == old.sha256  # model.onnx itself did not change; its weights did
    weight = numpy_helper.to_array(outcome.entry.model.graph.initializer[0])
    assert weight.reshape(-1)[0] == 7.0


def test_a_missing_file_that_appears_triggers_a_reload(tmp_path: Path) -> None:
    folder = write_model_folder(tmp_path, "t", tabular_model(), WITH_BACKGROUND)
    repo = _repo(tmp_path)
    failed = repo.get("t")
    assert isinstance(failed, FailedModel) and "background" in failed.reason
    assert not repo.survey()  # a failed folder is not retried until it changes
    _background(folder, 0.5)
    outcome = _reload(repo, "t")
    assert isinstance(outcome, Loaded) and isinstance(outcome.entry, LoadedModel)
    assert repo.install(outcome) is None
    assert repo.get("t").status == "READY"


def test_added_and_removed_folders(tmp_path: Path) -> None:
    write_model_folder(tmp_path, "a", tabular_model(), TABULAR_YAML)
    repo = _repo(tmp_path)
    write_model_folder(tmp_path, "b", tabular_model(), TABULAR_YAML)
    (tmp_path / "c").mkdir()  # not a model folder: no model.onnx
    survey = repo.survey()
    assert list(survey.added) == ["b"] and not survey.changed and not survey.removed
    shutil.rmtree(tmp_path / "a")
    assert repo.survey().removed == ["a"]


def test_a_broken_replacement_keeps_the_old_version_serving_and_says_why(tmp_path: Path) -> None:
    folder = write_model_folder(tmp_path, "t", tabular_model(), TABULAR_YAML)
    repo = _repo(tmp_path)
    old = repo.get("t")
    (folder / "model.onnx").write_bytes(b"not an onnx model")
    outcome = _reload(repo, "t")
    assert isinstance(outcome, Loaded) and isinstance(outcome.entry, FailedModel)
    assert repo.install(outcome) is None
    assert repo.get("t") is old
    note = repo.note("t")
    assert "new version failed to load" in note and old.sha256[:12] in note and "not a valid ONNX model" in note
    assert not repo.survey()  # not retried until the folder changes again
    onnx.save_model(_scaled(2.0), str(folder / "model.onnx"))
    outcome = _reload(repo, "t")
    assert repo.install(outcome) is old
    assert repo.note("t") == ""


def test_unload_is_sticky_until_installed_again(tmp_path: Path) -> None:
    folder = write_model_folder(tmp_path, "t", tabular_model(), TABULAR_YAML)
    repo = _repo(tmp_path)
    old = repo.get("t")
    assert repo.unload("t") is old
    entry = repo.get("t")
    assert isinstance(entry, UnloadedModel) and entry.status == "UNLOADED"
    assert entry.sha256 == old.sha256 and "UnloadModel" in entry.reason
    onnx.save_model(_scaled(2.0), str(folder / "model.onnx"))
    assert not repo.survey()  # the poller leaves an unloaded model alone
    shutil.rmtree(folder)
    assert repo.survey().removed == ["t"]
    repo.remove("t")
    write_model_folder(tmp_path, "t", tabular_model(), TABULAR_YAML)
    survey = repo.survey()
    assert list(survey.reappeared) == ["t"] and not survey.added
    repo.list_unloaded("t", folder)
    assert repo.get("t").status == "UNLOADED"
    with pytest.raises(NotFound):
        repo.unload("nothing-here")


# The model control ----------------------------------------------------------------------------------


def test_model_control_polls_loads_and_unloads(tmp_path: Path) -> None:
    folder = write_model_folder(tmp_path, "t", tabular_model(), TABULAR_YAML)
    repo = _repo(tmp_path)
    retired: list[tuple[str, int]] = []
    warmed: list[int] = []
    control = ModelControl(repo, 0.0, retire=lambda e: retired.append((e.name, e.version)),
                           prepare=lambda e: warmed.append(e.version))
    first = repo.get("t")

    async def main() -> None:
        assert await control.poll() == []
        write_model_folder(tmp_path, "u", tabular_model(), TABULAR_YAML)
        onnx.save_model(_scaled(2.0), str(folder / "model.onnx"))
        assert sorted(await control.poll()) == ["t", "u"]
        second = repo.get("t")
        assert second.version > first.version and retired == [("t", first.version)]
        assert sorted(warmed) == sorted([second.version, repo.get("u").version])

        # LoadModel: a fresh version even when nothing changed; errors say why
        third = await control.load("t")
        assert isinstance(third, LoadedModel) and third.version > second.version
        assert retired[-1] == ("t", second.version)
        with pytest.raises(NotFound, match="no folder"):
            await control.load("absent")
        (folder / "model.onnx").write_bytes(b"garbage")
        with pytest.raises(FailedPrecondition, match="failed to load.*keeps serving"):
            await control.load("t")
        assert repo.get("t") is third

        # UnloadModel, then the poller leaves it; LoadModel brings it back
        onnx.save_model(_scaled(4.0), str(folder / "model.onnx"))
        assert (await control.unload("t")).status == "UNLOADED"
        assert retired[-1] == ("t", third.version)
        assert await control.poll() == []
        assert repo.get("t").status == "UNLOADED"
        back = await control.load("t")
        assert back.status == "READY" and back.version > third.version

        shutil.rmtree(tmp_path / "u")
        assert await control.poll() == ["u"]
        with pytest.raises(NotFound):
            repo.get("u")

    asyncio.run(main())


def test_polling_runs_in_the_background_and_stops(tmp_path: Path) -> None:
    write_model_folder(tmp_path, "t", tabular_model(), TABULAR_YAML)
    repo = _repo(tmp_path)
    control = ModelControl(repo, 0.05)

    async def main() -> None:
        control.start()
        write_model_folder(tmp_path, "new", tabular_model(), TABULAR_YAML)
        for _ in range(200):
            await asyncio.sleep(0.05)
            if any(e.name == "new" for e in repo.list()):
                break
        assert repo.get("new").status == "READY"
        await control.stop()

    asyncio.run(main())


def test_a_missing_root_skips_the_poll_and_keeps_serving(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_model_folder(root, "t", tabular_model(), TABULAR_YAML)
    repo = _repo(root)
    shutil.move(root, tmp_path / "elsewhere")
    assert asyncio.run(ModelControl(repo, 0.0).poll()) == []
    assert repo.get("t").status == "READY"


# The engine: sessions per version ---------------------------------------------------------------------


def predict_job(x: np.ndarray, rows: int) -> Job:
    return Job(constants={"x0": x}, rows=iter([{"row": np.arange(rows)}]), total_rows=rows,
               consume=lambda codes, outputs, slot: None)


def test_a_retired_versions_sessions_close_once_idle(monkeypatch) -> None:
    monkeypatch.setattr(engine_module, "RETIRED_IDLE_S", 0.2)

    async def main() -> None:
        engine = Engine(settings())
        old, _ = served_linear("m", (1, 2, 2), 2)
        old.version = 1
        new, _ = served_linear("m", (1, 2, 2), 2, seed=1)
        new.version = 2
        x = np.ones((1, 2, 2), np.float32)
        await engine.run(old, Predict(), predict_job(x, 4))
        await engine.run(new, Predict(), predict_job(x, 4))
        assert sorted(k[1] for k in engine._schedulers) == [1, 2]  # one scheduler per version
        engine.retire("m", 2)
        await engine.run(old, Predict(), predict_job(x, 4))  # a request still on the old version
        assert sorted(k[1] for k in engine._schedulers) == [1, 2]
        for _ in range(100):
            await asyncio.sleep(0.05)
            if len(engine._schedulers) == 1:
                break
        assert [k[1] for k in engine._schedulers] == [2]
        await engine.close()

    asyncio.run(main())
