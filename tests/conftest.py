"""Shared fixtures: a tiny BERT built from a config (with MiniLM's real tokenizer), a live server."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustkd.testing import ServiceProcess, make_tiny_model, minilm_path

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def testclient_host():  # noqa: ANN201
    """TestClient sends `Host: testserver`; the service answers only the host names it is configured for."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROBUSTKD_ALLOWED_HOSTS", "testserver")
        yield


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def minilm() -> Path:
    return minilm_path()


@pytest.fixture
def make_server(tmp_path: Path):  # noqa: ANN201
    servers: list[ServiceProcess] = []

    def make(**env: str) -> ServiceProcess:
        s = ServiceProcess(env, tmp_path / f"server{len(servers)}.log", cwd=REPO)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()
