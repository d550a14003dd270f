"""The real `robustkd serve` process over HTTP: submit, poll, stream rows from another process, errors."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np

from robustkd.shared.reader import CacheReader
from robustkd.testing import wait_job
from tests.conftest import REPO

REQ = {"task": "sentiment-rt-drugs", "limit": 10, "shard_rows": 16, "layers": [1, 2]}


def test_submit_poll_stream_resubmit(make_server, tiny_model: Path, tmp_path: Path) -> None:  # noqa: ANN001
    root = tmp_path / "cache"
    srv = make_server(ROBUSTKD_MODEL=str(tiny_model), ROBUSTKD_CACHE_ROOT=str(root)).start()
    assert httpx.get(srv.url + "/healthz").json() == {"ok": True}
    assert httpx.get(srv.url + "/openapi.json").json()["paths"]
    r = httpx.post(srv.url + "/v1/caches", json=REQ, timeout=60)
    assert r.status_code == 202, r.text
    key = r.json()["key"]
    job = wait_job(srv.url, key)
    assert job["state"] == "succeeded", job
    assert job["progress"]["rows_done"] == job["progress"]["rows_total"] > 0
    again = httpx.post(srv.url + "/v1/caches", json=REQ, timeout=60)
    assert again.status_code == 200 and again.json()["key"] == key
    assert again.json()["manifest"]["n_rows"] == 10 * 3 * 2 + 20 + 20  # + held-out validation and test
    assert [c["key"] for c in httpx.get(srv.url + "/v1/caches").json()] == [key]

    # another process reads every shard over HTTP; it must equal reading the folder
    script = (
        "import sys, json, numpy as np\n"
        "from robustkd.shared.reader import CacheReader\n"
        "r = CacheReader(sys.argv[1])\n"
        "out = {}\n"
        "for k in range(r.manifest.n_shards):\n"
        "    s = r.read_shard(k)\n"
        "    out[k] = {'ids': s.rows.column('example_id').to_pylist(), 'text': s.rows.column('text').to_pylist(),\n"
        "              'logits': s.targets['logits'].tolist(), 'l2': s.targets['layer_2'].tolist()}\n"
        "out['head'] = {k: v.tolist() for k, v in r.read_head().items()}\n"
        "print(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", script, f"{srv.url}/v1/caches/{key}"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    remote = json.loads(proc.stdout)
    local = CacheReader(str(root / key))
    for k in range(local.manifest.n_shards):
        s = local.read_shard(k)
        assert remote[str(k)]["ids"] == s.rows.column("example_id").to_pylist()
        assert remote[str(k)]["text"] == s.rows.column("text").to_pylist()
        np.testing.assert_array_equal(np.array(remote[str(k)]["logits"], np.float32), s.targets["logits"])
        np.testing.assert_array_equal(np.array(remote[str(k)]["l2"], np.float32), s.targets["layer_2"])
    np.testing.assert_array_equal(np.array(remote["head"]["bias"], np.float32), local.read_head()["bias"])

    # bad input gets 4xx naming the problem
    bad = [({**REQ, "task": "nope"}, "nope"), ({**REQ, "layers": [9]}, "layers"),
           ({**REQ, "transforms": ["nope"]}, "transforms"), ({**REQ, "model": str(tmp_path / "x")}, "model"),
           ({**REQ, "severities": [9]}, "severities"), ({**REQ, "bogus": 1}, "bogus")]
    for body, word in bad:
        r = httpx.post(srv.url + "/v1/caches", json=body, timeout=60)
        assert r.status_code == 422 and word in r.text, (body, r.status_code, r.text)
    # raw paths, as sent (httpx would normalise `..` away before the server saw it)
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    for raw, status in (("/v1/caches/..", 400), ("/v1/caches/../head", 400), (f"/v1/caches/{key}%0a", 400),
                        ("/v1/jobs/../../etc", 404)):
        conn.request("GET", raw)
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == status, (raw, resp.status, body)
    conn.close()
    assert httpx.get(srv.url + "/v1/jobs/" + "z" * 64).status_code == 400
    assert httpx.get(srv.url + "/v1/jobs/" + "0" * 64).status_code == 404
    assert httpx.get(f"{srv.url}/v1/caches/{key}/rows", params={"start": 5, "stop": 4}).status_code == 416
    assert httpx.post(srv.url + "/v1/caches", content=b"x" * (2 << 20),
                      headers={"content-type": "application/json"}).status_code == 413

    assert httpx.delete(f"{srv.url}/v1/caches/{key}").status_code == 200
    assert not (root / key).exists()
    assert httpx.get(f"{srv.url}/v1/caches/{key}").status_code == 404


def test_a_bad_setting_is_named_not_a_traceback() -> None:
    from typer.testing import CliRunner

    from robustkd.cli import app

    res = CliRunner(env={"ROBUSTKD_PORT": "abc"}).invoke(app, ["serve"])
    assert res.exit_code == 2 and "ROBUSTKD_PORT" in res.output and "'abc'" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
