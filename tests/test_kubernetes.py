"""deploy/: the KubeRay RayJob and the Kubernetes Indexed Job that run precompute, read as YAML; their commands are
checked against the real CLI and their ROBUSTKD_* variables against the settings."""

from __future__ import annotations

import re
import shlex
import tomllib

import yaml
from packaging.specifiers import SpecifierSet
from typer.testing import CliRunner

from robustkd.cli import app
from robustkd.teacher_service.settings import Settings
from tests.conftest import REPO

DEPLOY = REPO / "deploy"


def load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def check_command(argv: list[str]) -> None:
    """`robustkd <sub> --opt ...`: a real subcommand, each option one it has."""
    assert argv[0] == "robustkd", argv
    r = CliRunner().invoke(app, [argv[1], "--help"])
    assert r.exit_code == 0, r.output
    for opt in (a.split("=")[0] for a in argv[2:] if a.startswith("--")):
        assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", r.output), f"no option {opt}"


def check_pod(pod: dict) -> None:
    """Each container's ROBUSTKD_* variables are settings; the cache root is a volume every pod mounts there."""
    spec = pod["spec"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]}
    for c in spec["containers"]:
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        for name in env:
            assert name.startswith("ROBUSTKD_") and name.removeprefix("ROBUSTKD_").lower() in Settings.model_fields
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert claims[mounts[env["ROBUSTKD_CACHE_ROOT"]]] == "robustkd-cache"


def test_indexed_job_runs_one_static_worker_per_index() -> None:
    job = load("indexed-job.yaml")
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    [c] = spec["template"]["spec"]["containers"]
    argv = c["command"] + c.get("args", [])
    assert argv[:2] == ["robustkd", "precompute"] and "--worker" not in argv and "--engine" not in argv
    workers = int(argv[argv.index("--workers") + 1])
    assert spec["completions"] == spec["parallelism"] == workers > 1
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # backoffLimitPerIndex needs it
    check_command(argv)
    check_pod(spec["template"])


def test_rayjob_runs_the_ray_engine_on_gpu_workers() -> None:
    job = load("ray-job.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["robustkd", "precompute"] and argv[argv.index("--engine") + 1] == "ray"
    assert "--ray-address" not in argv and "--workers" not in argv  # KubeRay sets RAY_ADDRESS
    check_command(argv)
    cluster = job["spec"]["rayClusterSpec"]
    [extra] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["ray"]
    assert cluster["rayVersion"] in SpecifierSet(extra.removeprefix("ray")), "the image's Ray is the extra's"
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no shard on the head
    check_pod(head["template"])
    [group] = cluster["workerGroupSpecs"]
    [worker] = group["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] >= 1
    check_pod(group["template"])
    images = {c["image"] for pod in (head["template"], group["template"]) for c in pod["spec"]["containers"]}
    assert images == {"robustkd-ray:latest"}
