"""Fixtures of the integration tests: one shared server on the demo models (plus a broken one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from explaind_client import ExplaindClient

from _server import DEMO, Server, make_repository, start_server, stop_server


@pytest.fixture(scope="session")
def repository(tmp_path_factory) -> Path:
    return make_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="session")
def server(repository, tmp_path_factory) -> Iterator[Server]:
    srv = start_server(repository, tmp_path_factory.mktemp("logs") / "server.log",
                       max_message_bytes=4 << 20, max_num_masks=60_000)
    yield srv
    code = stop_server(srv)
    assert code == 0, srv.log()


@pytest.fixture(scope="session")
def client(server) -> Iterator[ExplaindClient]:
    with server.client() as c:
        yield c


@pytest.fixture(scope="session")
def example_image() -> tuple[bytes, dict]:
    boxes = json.loads((DEMO / "examples" / "boxes.json").read_text())
    name = sorted(boxes)[0]
    return (DEMO / "examples" / name).read_bytes(), boxes[name]
