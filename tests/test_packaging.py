"""One import namespace: the wheel installs robustkd.{shared,teacher_service,trainer} and no generic top-level names;
the editable install maps the same names onto the repository's folders."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

WHERE = "import robustkd.shared.spec as s, robustkd.trainer.train as t, robustkd.teacher_service.app as a; " \
        "print(s.__file__); print(t.__file__); print(a.__file__)"

PROMPTS = "from robustkd.teacher_service.general_prompts import PROMPTS_FILE, load_prompts; " \
          "print(len(load_prompts()), PROMPTS_FILE)"
RENDER = "from robustkd.teacher_service.dashboard import page; " \
         "print(page('caches.html', nav='caches', title='Caches', caches=[], active=[], splits=[]).body.decode())"


@pytest.mark.slow
def test_wheel_holds_one_namespace_and_imports_from_itself(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True, timeout=600)
    wheel = next(tmp_path.glob("robustkd-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"robustkd"}
    for module in ("robustkd/shared/spec.py", "robustkd/teacher_service/app.py", "robustkd/trainer/train.py",
                   "robustkd/cli.py"):
        assert module in names
    data = [f"{d}/{p.name}" for d in ("templates", "static", "data") for p in (REPO / "teacher_service" / d).iterdir()]
    assert len(data) > 10 and {f"robustkd/teacher_service/{f}" for f in data} <= set(names)  # the dashboard's, the
    # unrelated prompts
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    out = subprocess.run([sys.executable, "-c", WHERE], cwd=tmp_path, env={"PYTHONPATH": str(site)},
                         capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(p).is_relative_to(site) for p in out), out
    page = subprocess.run([sys.executable, "-c", RENDER], cwd=tmp_path, env={"PYTHONPATH": str(site)},
                          capture_output=True, text=True, check=True).stdout
    assert "<title>Caches · robustkd</title>" in page  # the dashboard's templates are read from the wheel
    prompts = subprocess.run([sys.executable, "-c", PROMPTS], cwd=tmp_path, env={"PYTHONPATH": str(site)},
                             capture_output=True, text=True, check=True).stdout.split()
    assert int(prompts[0]) > 300 and Path(prompts[1]).is_relative_to(site)


def test_editable_install_maps_the_folders(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", WHERE], cwd=tmp_path, capture_output=True, text=True,
                         check=True).stdout.split()
    assert [Path(p).relative_to(REPO).parts[0] for p in out] == ["shared", "trainer", "teacher_service"]


def test_service_reports_the_package_version(tmp_path: Path) -> None:
    """pyproject.toml is the one place the version is written; the service's OpenAPI schema reads it back."""
    from importlib.metadata import version

    from fastapi.testclient import TestClient

    from robustkd.teacher_service.app import create_app
    from robustkd.teacher_service.settings import Settings

    schema = TestClient(create_app(Settings(cache_root=str(tmp_path)))).get("/openapi.json").json()
    assert schema["info"]["version"] == version("robustkd")
