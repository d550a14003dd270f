"""Hostile and careless clients against a real `robustkd serve` (issue #9, items 4-10).

One server for the module: an API token, one concurrent row stream, a 1 s header timeout, a data root.
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from robustkd.shared.reader import CacheReader
from robustkd.testing import ServiceProcess, ensure_cache, wait_job
from tests.conftest import REPO

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FAST = ["keyboard_typo", "word_dropout"]  # no neighbour table to build first
SMALL = {"task": "sentiment-rt-drugs", "limit": 6, "shard_rows": 9, "layers": [1, 2], "transforms": FAST}
# 18,500 rows, ~7.5 MB on the wire: more than a 4 KiB receive buffer and the server's send buffer (4 MiB) hold
BIG = {"task": "sentiment-rt-drugs", "variants": 5, "layers": [1, 2], "max_length": 32, "transforms": FAST}


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    work = tmp_path_factory.mktemp("hostile")
    (work / "data").mkdir()
    srv = ServiceProcess({"ROBUSTKD_MODEL": str(tiny_model), "ROBUSTKD_CACHE_ROOT": str(work / "cache"),
                          "ROBUSTKD_API_TOKEN": TOKEN, "ROBUSTKD_MAX_STREAMS": "1",
                          "ROBUSTKD_HEADER_TIMEOUT_S": "1", "ROBUSTKD_DATA_ROOTS": json.dumps([str(work / "data")])},
                         work / "server.log", cwd=REPO).start()
    try:
        small = ensure_cache(srv.url, SMALL, 300, TOKEN)["key"]
        yield srv, work, small
    finally:
        srv.stop()


def raw(srv: ServiceProcess, data: bytes, timeout: float = 20) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=timeout)
    s.sendall(data)
    return s


def status_of(s: socket.socket) -> int:
    head = b""
    while b"\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0


# ---- 4. request bodies --------------------------------------------------------------------------
def test_content_length_with_chunked_is_refused_unread(server) -> None:  # noqa: ANN001
    srv, _, _ = server
    s = raw(srv, b"POST /v1/caches HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
    with s:
        assert status_of(s) == 400  # at once: the chunked body (never sent here) is not waited for


def test_unauthenticated_body_is_not_read(server) -> None:  # noqa: ANN001
    srv, _, _ = server
    s = raw(srv, b"POST /v1/caches HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 900000\r\n\r\n")  # under the cap; the body is never sent
    with s:
        assert status_of(s) == 401


def test_the_cap_counts_bytes_received() -> None:
    """Whatever the headers say, the middleware stops the body at the cap."""
    from robustkd.teacher_service.app import BodyGuard

    seen = []

    async def app(scope, receive, send) -> None:  # noqa: ANN001
        while True:
            msg = await receive()
            seen.append(len(msg.get("body", b"")))
            if not msg.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    chunks = [{"type": "http.request", "body": b"x" * 65536, "more_body": True} for _ in range(64)]
    sent = []

    async def receive() -> dict:
        return chunks.pop(0)

    async def send(msg: dict) -> None:
        sent.append(msg)

    scope = {"type": "http", "method": "POST", "path": "/v1/caches",
             "headers": [(b"content-length", b"5"), (b"content-type", b"application/json")]}
    asyncio.run(BodyGuard(app, max_bytes=1 << 20, token=None)(scope, receive, send))
    assert sum(seen) <= 1 << 20 and len(chunks) >= 64 - 17
    assert sent[0]["status"] == 413


# ---- 5. concurrent row streams ------------------------------------------------------------------
def test_row_streams_are_bounded(server) -> None:  # noqa: ANN001
    srv, _, _ = server
    m = ensure_cache(srv.url, BIG, 300, TOKEN)
    rows = f"{srv.url}/v1/caches/{m['key']}/rows"
    span = {"start": 0, "stop": min(m["n_rows"], 65536)}
    reader = CacheReader(f"{srv.url}/v1/caches/{m['key']}")
    told_to_wait, got = threading.Event(), {}
    reader._http.event_hooks["response"].append(lambda r: told_to_wait.set() if r.status_code == 503 else None)
    waiting = threading.Thread(target=lambda: got.update(shard=reader.read_shard(1)))
    first = socket.socket()
    first.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # no autotuned 32 MiB buffer takes it all
    first.settimeout(60)
    first.connect(("127.0.0.1", srv.port))
    first.sendall(f"GET /v1/caches/{m['key']}/rows?start=0&stop={span['stop']} HTTP/1.1\r\n"
                  "Host: 127.0.0.1\r\n\r\n".encode())
    with first:
        assert status_of(first) == 200  # the stream is open and not read further
        busy = httpx.get(rows, params=span, timeout=60)
        assert busy.status_code == 503 and int(busy.headers["retry-after"]) >= 1, busy.status_code
        waiting.start()  # a CacheReader told to wait waits, then reads once the slot is free
        assert told_to_wait.wait(60)
    waiting.join(120)
    assert got["shard"].rows.num_rows == m["shard_rows"]
    deadline = time.time() + 60  # the closed stream's slot comes back
    while (r := httpx.get(rows, params={"start": 0, "stop": 10}, timeout=60)).status_code == 503 \
            and time.time() < deadline:
        time.sleep(0.1)
    assert r.status_code == 200


# ---- 6. odd input -------------------------------------------------------------------------------
def test_nan_and_a_trailing_newline_key(server) -> None:  # noqa: ANN001
    srv, _, small = server
    r = httpx.post(srv.url + "/v1/caches", content=b'{"limit": NaN}', headers={**AUTH, "content-type":
                                                                                 "application/json"})
    assert r.status_code == 422 and "limit" in r.text, r.text
    s = raw(srv, f"GET /v1/caches/{small}%0a HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    with s:
        assert status_of(s) == 400


# ---- 7. authentication --------------------------------------------------------------------------
def test_token_scheme_is_case_insensitive(server) -> None:  # noqa: ANN001
    srv, _, small = server
    for scheme in ("bearer", "BEARER", "Bearer"):
        r = httpx.post(srv.url + "/v1/caches", json=SMALL, headers={"Authorization": f"{scheme} {TOKEN}"})
        assert r.status_code == 200, (scheme, r.text)
    assert httpx.post(srv.url + "/v1/caches", json=SMALL, headers={"Authorization": "Basic x"}).status_code == 401
    assert httpx.post(srv.url + "/v1/caches", json=SMALL, headers={"Authorization": "Bearer"}).status_code == 401


def test_tokens_are_compared_in_constant_time(tiny_model: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    from robustkd.teacher_service.app import create_app
    from robustkd.teacher_service.settings import Settings

    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    app = create_app(Settings(cache_root=str(tmp_path), model=str(tiny_model), api_token=TOKEN))
    assert TestClient(app).delete("/v1/jobs/" + "0" * 64, headers={"Authorization": "Bearer x"}).status_code == 401
    assert calls


def test_serve_refuses_an_open_bind_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from robustkd.cli import app

    started = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **kw: started.append(self.config.host))
    monkeypatch.delenv("ROBUSTKD_API_TOKEN", raising=False)
    runner = CliRunner()
    r = runner.invoke(app, ["serve", "--host", "0.0.0.0"], env={"ROBUSTKD_API_TOKEN": ""})
    assert r.exit_code == 2 and "ROBUSTKD_API_TOKEN" in r.output and "--insecure" in r.output, r.output
    assert not started
    r = runner.invoke(app, ["serve", "--host", "0.0.0.0", "--insecure"], env={"ROBUSTKD_API_TOKEN": ""})
    assert r.exit_code == 0 and started == ["0.0.0.0"], r.output
    r = runner.invoke(app, ["serve", "--host", "127.0.0.1"], env={"ROBUSTKD_API_TOKEN": ""})
    assert r.exit_code == 0 and started[-1] == "127.0.0.1", r.output


def test_compose_needs_a_token() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    assert "change-me" not in text and "change-me" not in (REPO / "scripts" / "stack.sh").read_text()
    assert text.count("${ROBUSTKD_API_TOKEN:?") == 2


# ---- 8. half-open connections -------------------------------------------------------------------
def test_incomplete_headers_are_dropped_and_others_served(server) -> None:  # noqa: ANN001
    srv, _, _ = server
    idle = [raw(srv, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n", timeout=2) for _ in range(200)]
    try:
        assert httpx.get(srv.url + "/healthz", timeout=30).status_code == 200
        deadline = time.time() + 60
        open_ = list(idle)
        while open_ and time.time() < deadline:
            readable, _, _ = select.select(open_, [], [], 1.0)
            for s in readable:
                try:
                    if s.recv(1024) == b"":
                        open_.remove(s)
                except OSError:
                    open_.remove(s)
        assert not open_, f"{len(open_)} of {len(idle)} incomplete connections still open"
    finally:
        for s in idle:
            s.close()


# ---- 9. disclosure ------------------------------------------------------------------------------
def test_answers_name_no_absolute_paths(server, tiny_model: Path) -> None:  # noqa: ANN001
    srv, work, small = server
    missing = httpx.get(f"{srv.url}/v1/caches/{'0' * 64}/rows", params={"start": 0, "stop": 1})
    assert missing.status_code == 404 and str(work) not in missing.text, missing.text
    assert str(tiny_model) not in httpx.get(srv.url + "/readyz").text
    assert str(tiny_model) not in httpx.get(srv.url + "/v1/caches").text
    # the cache's own record (its manifest, read by remote trainers) names the model relative to its root too
    for url in (f"{srv.url}/v1/caches/{small}", f"{srv.url}/v1/jobs/{small}"):
        answer = httpx.get(url)
        assert answer.status_code == 200 and str(tiny_model) not in answer.text, answer.text


def test_user_file_paths_are_kept_relative(server) -> None:  # noqa: ANN001
    srv, work, _ = server
    csv = work / "data" / "reviews.csv"
    csv.write_text("text,label,site\n" + "".join(f"row {i} {'good' if i % 2 else 'bad'},{i % 2},"
                                                 f"{'a' if i % 3 else 'b'}\n" for i in range(60)))
    body = {"task": "file", "path": str(csv), "text_column": "text", "label_column": "label",
            "domain_column": "site", "id_domains": ["a"], "ood_domains": ["b"], "layers": [1], "variants": 0,
            "shard_rows": 16}
    r = httpx.post(srv.url + "/v1/caches", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 202, r.text
    key = r.json()["key"]
    assert wait_job(srv.url, key)["state"] == "succeeded"
    for f in (work / "cache" / "_jobs" / f"{key}.json", work / "cache" / key / "manifest.json"):
        assert str(work) not in f.read_text(), f
    assert "reviews.csv" in (work / "cache" / key / "manifest.json").read_text()
    assert str(work) not in httpx.get(f"{srv.url}/v1/jobs/{key}").text
    outside = httpx.post(srv.url + "/v1/caches", json={**body, "path": "/etc/passwd"}, headers=AUTH)
    assert outside.status_code == 422 and "allowed root" in outside.text


def test_user_file_errors_name_the_file_relative_to_its_root(server) -> None:  # noqa: ANN001
    srv, work, _ = server
    (work / "data" / "sub").mkdir(exist_ok=True)
    (work / "data" / "sub" / "few.csv").write_text("text,label,site\nfine,1,a\nbad,0,b\n")
    body = {"task": "file", "path": "sub/few.csv", "text_column": "body", "label_column": "label",
            "domain_column": "site", "id_domains": ["a"], "ood_domains": ["b"], "layers": [1], "variants": 0}
    r = httpx.post(srv.url + "/v1/caches", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 422 and "'body' not found" in r.text, r.text
    assert str(work) not in r.text and "sub/few.csv" in r.text, r.text

def test_roots_default_to_the_project_folders_beyond_loopback(tmp_path: Path) -> None:
    from robustkd.shared.models import default_model
    from robustkd.teacher_service.settings import Settings

    local = Settings(cache_root=str(tmp_path / "cache"))
    assert local.allowed_data_roots() is None and local.allowed_model_roots() is None
    public = Settings(cache_root=str(tmp_path / "cache"), host="0.0.0.0")
    assert public.allowed_data_roots() == [str(tmp_path / "data")]
    assert public.allowed_model_roots() == [default_model()]
    explicit = Settings(cache_root=str(tmp_path / "cache"), host="0.0.0.0", data_roots=["/srv/data"])
    assert explicit.allowed_data_roots() == ["/srv/data"]


# ---- 10. the fuzzer writes nothing into the working tree ----------------------------------------
def test_fuzz_runs_schemathesis_outside_the_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse
    import subprocess
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    monkeypatch.setattr(sys, "path", sys.path)
    import fuzz

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(kw) or subprocess.CompletedProcess(
        cmd, 0, "", ""))
    args = argparse.Namespace(max_examples=1, seed=0, request_timeout=1.0)
    fuzz.schemathesis("http://127.0.0.1:1", tmp_path / "report", args, [], None, 10)
    cwd = Path(calls[0]["cwd"]).resolve()
    assert not cwd.is_relative_to(REPO) and cwd.is_relative_to(tmp_path.resolve()), cwd


def test_job_errors_name_roots_not_paths(tmp_path: Path) -> None:
    from robustkd.teacher_service.jobs import JobManager
    from robustkd.teacher_service.settings import Settings

    jobs = JobManager(Settings(cache_root=str(tmp_path / "cache"), data_roots=[str(tmp_path / "data")]))
    msg = jobs.scrub(f"OSError: cannot read {tmp_path}/cache/abc/spec.json nor {tmp_path}/data/x.csv")
    assert str(tmp_path) not in msg and "<cache root>/abc/spec.json" in msg and "<data root>/x.csv" in msg


def test_a_file_name_too_long_is_a_clear_422(tiny_model: Path, tmp_path: Path) -> None:
    """Found by benchmarks/fuzz.py: a 300-character file name made the lookup raise (500)."""
    from robustkd.teacher_service.app import create_app
    from robustkd.teacher_service.jobs import JobManager
    from robustkd.teacher_service.settings import Settings

    app = create_app(Settings(cache_root=str(tmp_path), model=str(tiny_model)))
    app.state.jobs = JobManager(app.state.settings)
    body = {"task": "file", "label_column": "a", "domain_column": "b", "id_domains": ["x"], "ood_domains": ["y"],
            "text_column": "t"}
    for path in ("0" * 300 + ".csv", "0" * 4000):
        r = TestClient(app, raise_server_exceptions=False).post("/v1/caches", json={**body, "path": path})
        assert r.status_code == 422 and ("path" in r.text or "extension" in r.text), (r.status_code, r.text[:200])


# ---- 11. DNS rebinding: only the configured host names are served ------------------------------
def test_unknown_host_names_are_refused(server) -> None:  # noqa: ANN001
    """A page on rebind.example whose name now resolves to 127.0.0.1 sends `Host: rebind.example`: refused
    before any route runs (reading, posting, cancelling); loopback names are served."""
    srv, _, small = server
    rebound = {"Host": "rebind.example"}
    for method, path, headers in (("GET", "/", {}), ("GET", "/v1/caches", {}), ("GET", f"/v1/caches/{small}", {}),
                                  ("GET", f"/v1/caches/{small}/rows?start=0&stop=1", {}),
                                  ("POST", "/v1/caches", AUTH), ("DELETE", f"/v1/jobs/{small}", AUTH)):
        r = httpx.request(method, srv.url + path, headers={**headers, **rebound}, json=SMALL if method == "POST"
                          else None)
        assert r.status_code == 400, (method, path, r.status_code)
    for host in ("127.0.0.1", f"127.0.0.1:{srv.port}", f"localhost:{srv.port}", f"[::1]:{srv.port}"):
        assert httpx.get(srv.url + "/v1/caches", headers={"Host": host}).status_code == 200, host


def test_allowed_hosts_add_names(tiny_model: Path, tmp_path: Path) -> None:
    """ROBUSTKD_ALLOWED_HOSTS (comma-separated) adds names to the loopback ones and the bind host."""
    from robustkd.teacher_service.app import create_app
    from robustkd.teacher_service.settings import Settings

    settings = Settings(cache_root=str(tmp_path), model=str(tiny_model), allowed_hosts="teacher, *.lab.example")
    assert settings.allowed_hosts == ["teacher", "*.lab.example"]
    app = create_app(settings)  # not started (no `with`): /healthz needs no worker
    for base, code in (("http://teacher:8000", 200), ("http://a.lab.example", 200), ("http://127.0.0.1:8000", 200),
                       ("http://rebind.example", 400), ("http://teacher.rebind.example", 400)):
        assert TestClient(app, base_url=base).get("/healthz").status_code == code, base
    bound = Settings(cache_root=str(tmp_path), host="10.1.2.3", allowed_hosts="")
    assert bound.allowed_hosts == [] and "10.1.2.3" in bound.trusted_hosts()


def test_compose_allows_its_service_name() -> None:
    """The compose trainer reaches the teacher as http://teacher:8000: the teacher must accept that name."""
    import yaml

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    allowed = compose["services"]["teacher"]["environment"]["ROBUSTKD_ALLOWED_HOSTS"]
    assert "teacher" in allowed.split(",") and "http://teacher:8000" in str(compose["services"]["trainer"])
