"""A live model repository on a real server: polling, versions, LoadModel / UnloadModel.

One server polls a copy of the demo repository every 0.2 s; each test works on folders of its
own (copies of the tabular demo), so the tests do not depend on each other's order.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import onnx
import onnxruntime
import pytest
from explaind_client import Explanation, Progress
from explaind_client.v1 import explaind_pb2 as pb

from _server import DEMO, Server, start_server, stop_server
from _server import wait_until as poll_until

POLL_S = 0.2
TABULAR = DEMO / "repository" / "tabular"
X = np.load(TABULAR / "background.npy")[0].astype(np.float32)  # a row of wine features
FEATURES = ["alcohol", "malic_acid", "ash", "alcalinity_of_ash", "magnesium", "total_phenols", "flavanoids",
            "nonflavanoid_phenols", "proanthocyanins", "color_intensity", "hue",
            "od280/od315_of_diluted_wines", "proline"]


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[tuple[Server, Path]]:
    root = tmp_path_factory.mktemp("live")
    repo = root / "models"
    shutil.copytree(DEMO / "repository", repo)
    server = start_server(repo, root / "server.log", repository_poll_s=POLL_S)
    yield server, repo
    code = stop_server(server)
    assert code == 0, server.log()


@pytest.fixture(scope="module")
def client(live):
    with live[0].client(timeout=60) as c:
        yield c


def wait_until(condition, timeout: float = 30.0) -> bool:
    """The server polls every POLL_S: a few intervals suffice."""
    return poll_until(condition, timeout)


def status(client, name: str) -> str:
    try:
        return pb.ModelStatus.Name(client.get_model(name).status)
    except grpc.RpcError as exc:
        return exc.code().name


def rotated_tabular() -> onnx.ModelProto:
    """The tabular demo with its leaves' classes rotated (class c's votes go to c + 1): a valid model
    with new bytes whose probabilities are the old ones rotated by one class."""
    model = onnx.load(str(TABULAR / "model.onnx"))
    for node in model.graph.node:
        if node.op_type == "TreeEnsembleClassifier":
            for attribute in node.attribute:
                if attribute.name == "class_ids":
                    attribute.ints[:] = [(c + 1) % 3 for c in attribute.ints]
    return model


def probabilities(model_path: Path) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["probabilities"], {"input": X[None]})[0][0], dtype=np.float64)


def replace_atomically(path: Path, data: bytes) -> None:
    """Write beside the file and rename over it, as a deploy should (a reader sees old or new, whole)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def copy_tabular(repo: Path, name: str) -> Path:
    folder = repo / name
    shutil.copytree(TABULAR, folder)
    return folder


def log_entries(server: Server, model: str) -> list[dict]:
    entries = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    return [e for e in entries if e.get("model") == model]


def sessions_left(server: Server, model: str, sha256: str) -> set[str]:
    """The variants of `model`'s version `sha256` whose session was built and not yet closed (server log)."""
    entries = log_entries(server, model)
    versions = {e["version"] for e in entries if e["msg"] == "model loaded" and e["sha256"] == sha256}
    ready = {e["variant"] for e in entries if e["msg"] == "session ready" and e["version"] in versions}
    closed = {e["variant"] for e in entries if e["msg"].startswith("session") and e["msg"] != "session ready"
              and e.get("version") in versions}
    return ready - closed


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(*args, **kwargs)
    return err.value


def test_a_new_folder_is_listed_ready_with_its_version_and_feature_names(live, client):
    server, repo = live
    started = time.time()
    copy_tabular(repo, "live-new")
    assert wait_until(lambda: status(client, "live-new") == "READY")
    info = client.get_model("live-new")
    assert info.sha256 == client.get_model("tabular").sha256  # the same model.onnx
    assert list(info.feature_names) == FEATURES and info.num_features == 13
    assert started - 1 <= info.loaded_at.ToNanoseconds() / 1e9 <= time.time() + 1
    assert list(client.get_model("shapes").feature_names) == []  # image models have none
    result = client.explain("live-new", method="occlusion", tensor=X)
    assert result.stats["model_sha256"] == info.sha256


def test_a_model_replaced_while_requests_run_switches_versions_without_a_failure(live, client):
    server, repo = live
    folder = copy_tabular(repo, "live-swap")
    assert wait_until(lambda: status(client, "live-swap") == "READY")
    before = client.get_model("live-swap")
    rotated = rotated_tabular()
    (repo.parent / "rotated.onnx").write_bytes(rotated.SerializeToString())
    new_sha = hashlib.sha256(rotated.SerializeToString()).hexdigest()
    expected = {before.sha256: probabilities(TABULAR / "model.onnx"), new_sha: probabilities(repo.parent / "rotated.onnx")}
    assert not np.allclose(expected[before.sha256], expected[new_sha])  # the versions answer differently

    seen: list[list[tuple[str, np.ndarray]]] = [[] for _ in range(3)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def loop(index: int) -> None:
        with server.client(timeout=60) as c:
            while not stop.is_set():
                try:
                    method = ("occlusion", "kernel_shap", "lime")[index]
                    params = {} if method == "occlusion" else {"nsamples": 300} if method == "kernel_shap" \
                        else {"num_samples": 300}
                    r = c.explain("live-swap", method=method, tensor=X, seed=1, params=params)
                except BaseException as exc:  # every failure is a test failure
                    errors.append(exc)
                    return
                probs = np.zeros(3)
                for score in r.top_classes:
                    probs[score.index] = score.probability
                seen[index].append((r.stats["model_sha256"], probs))

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: all(len(s) >= 2 for s in seen) or bool(errors))
        replace_atomically(folder / "model.onnx", rotated.SerializeToString())
        assert wait_until(lambda: client.get_model("live-swap").sha256 == new_sha)
        assert wait_until(lambda: all(s and s[-1][0] == new_sha for s in seen) or bool(errors))
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors
    for answers in seen:
        shas = [sha for sha, _ in answers]
        assert shas[0] == before.sha256 and shas[-1] == new_sha
        switch = shas.index(new_sha)
        assert set(shas[:switch]) == {before.sha256} and set(shas[switch:]) == {new_sha}  # never back
        for sha, probs in answers:  # each answer is its version's
            np.testing.assert_allclose(probs, expected[sha], atol=1e-6)
    after = client.get_model("live-swap")
    assert after.status == pb.READY and after.reason == ""
    assert after.loaded_at.ToNanoseconds() > before.loaded_at.ToNanoseconds()
    # The old version's sessions close once idle; the new version's stay.
    assert sessions_left(server, "live-swap", new_sha)
    assert wait_until(lambda: not sessions_left(server, "live-swap", before.sha256)), \
        sessions_left(server, "live-swap", before.sha256)


def test_a_broken_replacement_keeps_the_old_version_serving_and_reports_why(live, client):
    server, repo = live
    folder = copy_tabular(repo, "live-broken")
    assert wait_until(lambda: status(client, "live-broken") == "READY")
    good = client.get_model("live-broken")
    replace_atomically(folder / "model.onnx", b"this is not an onnx model")
    assert wait_until(lambda: client.get_model("live-broken").reason != "")
    info = client.get_model("live-broken")
    assert info.status == pb.READY and info.sha256 == good.sha256
    assert "new version failed to load" in info.reason and "not a valid ONNX model" in info.reason
    assert good.sha256[:12] in info.reason
    assert client.explain("live-broken", method="occlusion", tensor=X).stats["model_sha256"] == good.sha256
    assert "model reload FAILED; the old version keeps serving" in server.log()

    # LoadModel on the broken folder: FAILED_PRECONDITION with the reason; the old version still serves
    err = rpc_error(client.stub.LoadModel, pb.LoadModelRequest(name="live-broken"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not a valid ONNX model" in err.details() and "keeps serving" in err.details()
    assert client.get_model("live-broken").sha256 == good.sha256

    shutil.copy(TABULAR / "model.onnx", folder / "model.onnx")  # fixed: the next poll loads it
    assert wait_until(lambda: client.get_model("live-broken").reason == "")
    fixed = client.get_model("live-broken")
    assert fixed.sha256 == good.sha256 and fixed.loaded_at.ToNanoseconds() > good.loaded_at.ToNanoseconds()


def test_load_and_unload_model(live, client):
    server, repo = live
    folder = copy_tabular(repo, "live-control")
    loaded = client.load_model("live-control")  # before any poll
    assert loaded.status == pb.READY and list(loaded.feature_names) == FEATURES
    again = client.load_model("live-control")  # a fresh load
    assert again.loaded_at.ToNanoseconds() > loaded.loaded_at.ToNanoseconds()

    for name in ("absent", "../tabular", ""):
        assert rpc_error(client.stub.LoadModel, pb.LoadModelRequest(name=name)).code() == grpc.StatusCode.NOT_FOUND
    assert rpc_error(client.stub.UnloadModel, pb.UnloadModelRequest(name="absent")).code() == grpc.StatusCode.NOT_FOUND

    # A request in flight (it has reported progress) when the model is unloaded finishes on it.
    stream = client.explain_stream("live-control", method="kernel_shap", tensor=X, seed=3,
                                   params={"nsamples": 60_000})
    assert isinstance(next(stream), Progress)
    unloaded = client.unload_model("live-control")
    final = [u for u in stream if isinstance(u, Explanation) and not u.partial]
    assert len(final) == 1 and final[0].stats["model_sha256"] == again.sha256
    assert unloaded.status == pb.UNLOADED and "UnloadModel" in unloaded.reason and unloaded.sha256 == again.sha256
    listed = {m.name: m for m in client.list_models()}
    assert listed["live-control"].status == pb.UNLOADED
    err = rpc_error(client.explain, "live-control", method="occlusion", tensor=X)
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "unloaded" in err.details()

    # The poller leaves an unloaded model alone, even when its folder changes.
    replace_atomically(folder / "model.onnx", rotated_tabular().SerializeToString())
    time.sleep(POLL_S * 5)
    assert status(client, "live-control") == "UNLOADED"
    back = client.load_model("live-control")
    assert back.status == pb.READY and back.sha256 != again.sha256
    assert client.explain("live-control", method="occlusion", tensor=X).stats["model_sha256"] == back.sha256

    # The same from the command line.
    cli = [sys.executable, "-m", "explaind.cli"]
    out = subprocess.run(cli + ["unload", "live-control", "--server", server.address], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and re.search(r"^status:\s+UNLOADED$", out.stdout, re.M), out
    out = subprocess.run(cli + ["load", "live-control", "--server", server.address, "--json"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and json.loads(out.stdout)["status"] == "READY", out
    out = subprocess.run(cli + ["load", "absent", "--server", server.address], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1 and out.stderr.startswith("explaind load: NOT_FOUND: "), out


def test_a_removed_folder_is_no_longer_listed(live, client):
    server, repo = live
    folder = copy_tabular(repo, "live-gone")
    assert wait_until(lambda: status(client, "live-gone") == "READY")
    shutil.rmtree(folder)
    assert wait_until(lambda: status(client, "live-gone") == "NOT_FOUND")
    assert "live-gone" not in {m.name for m in client.list_models()}
    err = rpc_error(client.explain, "live-gone", method="occlusion", tensor=X)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert rpc_error(client.stub.LoadModel, pb.LoadModelRequest(name="live-gone")).code() == grpc.StatusCode.NOT_FOUND


def test_model_control_is_refused_to_tenants_that_may_not_control_models(tmp_path):
    """A real server in this process, its servicer's admin check answering no (as token auth does for
    a tenant that is not an admin): LoadModel and UnloadModel are PERMISSION_DENIED, reads still work."""
    import asyncio

    from explaind.api.server import start
    from explaind.config import Settings
    from explaind_client.v1 import explaind_pb2_grpc as pb_grpc

    repo = tmp_path / "models"
    shutil.copytree(TABULAR, repo / "tabular")

    async def main() -> None:
        running = await start(Settings(host="127.0.0.1", port=0, metrics_port=-1, repository=str(repo),
                                       repository_poll_s=0, intra_op_threads=1))
        try:
            running.servicer.may_control_models = lambda tenant: False
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                stub = pb_grpc.ExplainerStub(channel)
                for call, request in ((stub.LoadModel, pb.LoadModelRequest(name="tabular")),
                                      (stub.UnloadModel, pb.UnloadModelRequest(name="tabular"))):
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await call(request, timeout=30)
                    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
                    assert "admin" in err.value.details()
                assert (await stub.GetModel(pb.GetModelRequest(name="tabular"), timeout=30)).status == pb.READY
                running.servicer.may_control_models = lambda tenant: True
                unloaded = await stub.UnloadModel(pb.UnloadModelRequest(name="tabular"), timeout=30)
                assert unloaded.status == pb.UNLOADED
        finally:
            await running.stop()

    asyncio.run(main())
