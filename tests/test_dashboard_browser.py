"""The dashboard in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium) against a
real `robustkd serve`: pages and links, the plot's hover, sorting, live job progress, cancelling, narrow windows,
no console errors. Screenshots go to $ROBUSTKD_SCREENSHOTS (or a temporary folder, printed)."""

from __future__ import annotations

import http.client
import json
import os
import re
import time
from pathlib import Path

import httpx
import pytest

from robustkd.shared import registry
from robustkd.testing import ServiceProcess, browser_missing, chromium, ensure_cache, screenshot
from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))]

TOKEN = "s3cret"
SMALL = {"task": "sentiment-rt-drugs", "limit": 24, "shard_rows": 30, "layers": [1, 2]}
WAIT_S = 300


def until(check, what: str, timeout: float = WAIT_S, every: float = 0.2):  # noqa: ANN001, ANN201
    """Poll `check()` until it returns something truthy (bounded); returns it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := check():
            return value
        time.sleep(every)
    raise TimeoutError(what)


@pytest.fixture(scope="module")
def world(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A served root with a cache, a real bench on it (lp-ft and ours, 2 seeds, their WiSE curves) and a run
    trained by a remote trainer over HTTP; a browser."""
    from typer.testing import CliRunner

    from robustkd.cli import app
    from robustkd.trainer.config import TrainConfig
    from robustkd.trainer.train import train_and_evaluate

    work = tmp_path_factory.mktemp("dashboard")
    root = work / "cache"
    env = {"ROBUSTKD_CACHE_ROOT": str(root), "ROBUSTKD_MODEL": str(tiny_model), "ROBUSTKD_API_TOKEN": TOKEN,
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    srv = ServiceProcess(env, work / "server.log", cwd=REPO).start()
    driver = None
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            key = ensure_cache(srv.url, SMALL, WAIT_S, TOKEN)["key"]
            args = ["bench", "--task", "sentiment-rt-drugs", "--cache", key, "--methods", "lp-ft,ours", "--seeds", "2",
                    "--budget", "small", "--train-groups", "8", "--threads", "1", "--out", str(work / "bench")]
            first = CliRunner().invoke(app, args)
            assert first.exit_code == 0, first.output
            recorded = sorted(p.name for p in (root / "_runs" / key).iterdir())
            for p in (root / "_runs" / key).iterdir():  # records dropped: the bench reusing the runs writes them
                p.unlink()
            again = CliRunner().invoke(app, args)
            assert again.exit_code == 0 and " trained" not in again.output, again.output
            assert sorted(p.name for p in (root / "_runs" / key).iterdir()) == recorded and len(recorded) == 16
            # the service names a model other than its default by folder name only: a remote trainer points at it
            train_and_evaluate(TrainConfig(cache=f"{srv.url}/v1/caches/{key}", out=str(work / "remote"),
                                           method="ft", max_steps=2, batch_groups=4, threads=1,
                                           model=str(tiny_model)))
        screens = Path(os.environ.get("ROBUSTKD_SCREENSHOTS") or work / "screenshots")
        print(f"dashboard screenshots: {screens}")
        driver = chromium()
        yield {"url": srv.url, "key": key, "root": root, "driver": driver, "screens": screens, "work": work}
    finally:
        if driver is not None:
            driver.quit()
        srv.stop()


def severe(driver, allow: str | None = None) -> list[dict]:  # noqa: ANN001
    """The browser console's errors since the last call (those matching `allow` left out)."""
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"
            and not (allow and re.search(allow, e["message"]))]


def fresh(read):  # noqa: ANN001, ANN201
    """`read()` again while the live job table swaps the element it found (bounded)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    for _ in range(50):
        try:
            return read()
        except (StaleElementReferenceException, NoSuchElementException):
            time.sleep(0.1)
    return read()


def texts(driver, css: str) -> list[str]:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, css)]


def test_pages_load_links_lead_on_and_the_plot_hovers(world: dict) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    d, url, key, shots = world["driver"], world["url"], world["key"], world["screens"]
    severe(d)
    d.get(url + "/")
    screenshot(d, shots / "caches.png")
    d.find_element(By.LINK_TEXT, key[:12]).click()
    assert d.find_element(By.TAG_NAME, "h1").text == f"Cache {key[:12]}"
    assert len(d.find_elements(By.CSS_SELECTOR, "table.sample tr.clean")) >= 1
    dots = d.find_elements(By.CSS_SELECTOR, "svg.plane a.hover")
    assert len(dots) == 17  # the bench's 16 records and the remote trainer's run
    ActionChains(d).move_to_element(dots[-1]).perform()
    tip = d.find_element(By.CSS_SELECTOR, "figure.plot .tip")
    until(lambda: tip.is_displayed() and tip.text == dots[-1].get_attribute("data-tip"), "the hover box", timeout=30)
    assert re.fullmatch(r"\S+ seed \d: ID acc [0-9.]+, OOD macro-F1 [0-9.]+", tip.text)
    screenshot(d, shots / "cache.png")
    d.find_element(By.CSS_SELECTOR, "table.runs tbody a[href^='/runs/']").click()
    assert d.find_element(By.TAG_NAME, "h1").text.startswith("Run ") and "ood_test" in d.page_source
    d.find_element(By.LINK_TEXT, "Benchmarks").click()
    d.find_element(By.PARTIAL_LINK_TEXT, "bench: sentiment-rt-drugs").click()
    assert "Is there robustness to preserve?" in d.find_element(By.CSS_SELECTOR, "article.report").text
    images = d.find_elements(By.CSS_SELECTOR, "article.report img")
    assert len(images) == 3 and all(d.execute_script("return arguments[0].naturalWidth", i) > 100 for i in images)
    assert len(d.find_elements(By.CSS_SELECTOR, "svg.plane polyline")) == 2  # the wise-ft and ours curves
    screenshot(d, shots / "bench.png")
    d.find_element(By.LINK_TEXT, "Students").click()
    assert "ft" in texts(d, "table.runs tbody td:first-child")  # the remote trainer's posted record
    assert severe(d) == []


def test_run_table_sorts_and_filters(world: dict) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    d, url, key = world["driver"], world["url"], world["key"]
    d.get(f"{url}/runs?cache={key}")

    def ood_f1() -> list[float]:
        return [float(t) for t in texts(d, "td[data-key='ood_f1']") if t != "–"]

    d.find_element(By.CSS_SELECTOR, "a[data-sort='ood_f1']").click()
    until(lambda: "sort=ood_f1" in d.current_url, "sorted by OOD F1")
    assert len(ood_f1()) == 17 and ood_f1() == sorted(ood_f1(), reverse=True)
    d.find_element(By.CSS_SELECTOR, "a[data-sort='ood_f1']").click()
    until(lambda: "order=asc" in d.current_url, "ascending")
    assert ood_f1() == sorted(ood_f1())
    Select(d.find_element(By.ID, "method")).select_by_visible_text("ours")
    d.find_element(By.CSS_SELECTOR, "form.filters button").click()
    until(lambda: "method=ours" in d.current_url, "filtered")
    assert texts(d, "table.runs tbody td:first-child") == ["ours", "ours"] and ood_f1() == sorted(ood_f1())
    screenshot(d, world["screens"] / "runs.png")
    assert severe(d) == []


def test_jobs_progress_live_and_cancel_with_the_token(world: dict) -> None:
    """A long job runs first, so two small ones wait behind it (positions 0 and 1) however fast the machine."""
    from selenium.webdriver.common.by import By

    d, url = world["driver"], world["url"]
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def post(body: dict) -> str:
        r = httpx.post(f"{url}/v1/caches", json=body, headers=auth, timeout=120)
        assert r.status_code == 202, r.text
        return r.json()["key"]

    slow = post({"task": "sentiment-rt-drugs", "variants": 16, "shard_rows": 68, "layers": [1, 2]})
    until(lambda: httpx.get(f"{url}/v1/jobs/{slow}").json()["state"] == "running", "the long job runs")
    watched = post({**SMALL, "limit": 200, "perturb_seed": 1})
    dropped = post({**SMALL, "perturb_seed": 2})
    severe(d)
    d.get(url + "/jobs")
    d.execute_script("window.notReloaded = true")

    def cell(key: str, n: int) -> str:
        return fresh(lambda: d.find_element(By.CSS_SELECTOR, f"#job-{key} td:nth-child({n})").text)

    def cancel(key: str) -> None:
        fresh(lambda: d.find_element(By.CSS_SELECTOR, f"button.cancel[data-key='{key}']").click())

    assert (cell(watched, 3), cell(watched, 7), cell(dropped, 3), cell(dropped, 7)) == ("queued", "0", "queued", "1")
    seen = [("queued", 0)]  # the watched job's (state, rows done) as the page shows them
    token = d.find_element(By.ID, "token")
    token.send_keys("wrong")
    cancel(dropped)
    until(lambda: "needs its API token" in d.find_element(By.ID, "job-status").text, "refused without the token")
    assert cell(dropped, 3) == "queued"
    token.clear()
    token.send_keys(TOKEN)
    cancel(dropped)
    until(lambda: cell(dropped, 3) == "cancelled", "the queued job cancelled")
    cancel(slow)
    until(lambda: cell(slow, 3).startswith("cancelled"), "the running job cancelled")

    def finished() -> bool:
        state = fresh(lambda: d.find_element(By.CSS_SELECTOR, f"#job-{watched}").get_attribute("data-state"))
        done, total = (int(x.replace(",", "")) for x in cell(watched, 4).split(" / "))
        if seen[-1] != (state, done):
            seen.append((state, done))
            if state == "running":
                screenshot(d, world["screens"] / "jobs.png", max_height=900)
        return state == "succeeded" and done == total > 0

    until(finished, "the watched job succeeds on the page", every=0.1)
    print("the watched job on the page:", seen)
    assert seen[-1][0] == "succeeded" and len(seen) >= 2
    assert [n for _, n in seen] == sorted(n for _, n in seen)  # rows done only go up
    assert d.execute_script("return window.notReloaded") is True  # all of it without a reload
    assert severe(d, allow=r"/v1/jobs/.* 401") == []  # only the refused cancel


def test_narrow_window_has_no_sideways_scroll_and_labelled_controls(world: dict) -> None:
    d, url, key = world["driver"], world["url"], world["key"]
    bench = registry.read_benches(str(world["root"]))[0]
    d.set_window_size(400, 900)
    try:
        for path in ("/", f"/caches/{key}", "/jobs", f"/runs?cache={key}", f"/benches/{bench.id}"):
            d.get(url + path)
            wide = d.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
            assert wide <= 1, (path, wide)
            unlabelled = d.execute_script(
                "return [...document.querySelectorAll('input:not([type=hidden]), select')]"
                ".filter(e => !document.querySelector(`label[for='${e.id}']`)).map(e => e.outerHTML)")
            assert unlabelled == [], path
        screenshot(d, world["screens"] / "narrow-cache.png", width=400)
    finally:
        d.set_window_size(1280, 800)
    assert severe(d) == []


def test_raw_paths_never_leave_the_served_folders(world: dict) -> None:
    bench = registry.read_benches(str(world["root"]))[0]
    host, port = world["url"].removeprefix("http://").split(":")
    files = f"/benches/{bench.id}/files"
    for raw in ("/bench/../../etc/passwd", "/benches/../../etc/passwd", f"{files}/../../../etc/passwd",
                f"{files}/..%2f..%2f..%2fetc%2fpasswd", "/static/../../../../etc/passwd", "/static/..%2fapp.py",
                f"/caches/{world['key']}/../../../etc/passwd"):
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", raw)  # http.client sends the path as it is: no dot-segment removal
        r = conn.getresponse()
        body = r.read().decode(errors="replace")
        conn.close()
        assert r.status in (400, 404) and "root:" not in body and "import" not in body, (raw, r.status)
    # what the bench folder does hold is served
    ok = httpx.get(f"{world['url']}/benches/{bench.id}/files/results.json")
    assert ok.status_code == 200 and json.loads(ok.text)["task"] == "sentiment-rt-drugs"
