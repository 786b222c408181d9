"""The gateway's web page end to end in headless Chromium (tests/e2e/page.mjs, playwright-core).

Needs Debian's chromium (/usr/bin/chromium; .ci/run installs it) and node: `npm ci` in tests/e2e runs
here when needed. The
script loads the page, uploads an example image, runs three methods with the deletion metric, and
reads back each heatmap's pixels; then uploads a file that is not an image; then edits a tabular row
and explains it with two methods (bar charts)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from _node import npm_ci
from _server import DEMO, free_port, start_server, stop_server

E2E = Path(__file__).resolve().parents[1] / "e2e"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="needs Debian's chromium (apt-get install chromium, as .ci/run does)")


@pytest.fixture(autouse=True)
def _playwright_core() -> None:
    npm_ci(E2E)  # skips without node/npm


def test_the_page_explains_an_upload_with_three_methods_and_shows_a_bad_upload_error(repository, tmp_path):
    port = free_port()
    srv = start_server(repository, tmp_path / "server.log", http_port=port)
    try:
        url = f"http://127.0.0.1:{port}"
        image = DEMO / "examples" / "star_0.png"
        shot = tmp_path / "page.png"
        run = subprocess.run(["node", str(E2E / "page.mjs"), url + "/", str(image), str(shot)], cwd=E2E,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        seen = json.loads(run.stdout.strip().splitlines()[-1])
        assert "failure" not in seen, seen["failure"]
        expected_error = httpx.post(f"{url}/v1/models/shapes:explainStream", timeout=60, json={
            "image": base64.b64encode(b"this is not a png").decode(), "saliency": {}}).json()["error"]
    finally:
        assert stop_server(srv) == 0, srv.log()
    cards = {card["method"]: card for card in seen["cards"]}
    assert set(cards) == {"saliency", "grad_cam", "occlusion"}
    for method, card in cards.items():
        assert card["done"] and not card["error"], card
        assert card["progress"] == 1
        assert (card["width"], card["height"]) == (64, 64)  # the rendered map at the model's input size
        assert card["opaque"] == 64 * 64 and card["colours"] > 50, card  # not blank: many colours
        assert card["top"][0].startswith("star "), card["top"]  # the example is a star
        assert len(card["evaluation"]) == 1 and card["evaluation"][0][0] == "deletion"
        assert 0 <= float(card["evaluation"][0][1]) <= 1
        assert card["png"].startswith("data:image/png;base64,") and card["raw"]
    assert expected_error["message"] in seen["badUploadError"]
    assert "INVALID_ARGUMENT" in seen["badUploadError"]
    tabular = {card["method"]: card for card in seen["tabular"]}
    assert set(tabular) == {"tree_shap", "occlusion"}
    for card in tabular.values():
        assert card["done"] and card["coloured"] > 500 and card["top"][0].startswith("class_"), card
    assert all(r.startswith(url) or r.startswith(("data:", "blob:")) for r in seen["requests"]), seen["requests"]
    assert shot.stat().st_size > 10_000
    if os.environ.get("EXPLAIND_PAGE_SCREENSHOT"):  # refreshing docs/gateway-page.png
        shutil.copyfile(shot, os.environ["EXPLAIND_PAGE_SCREENSHOT"])
