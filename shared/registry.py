"""The run registry: a JSON record per finished student run and per benchmark, beside the caches they used.

Records live on the cache's own store (a folder or any fsspec URL), next to, never inside, the checksummed
cache folders::

    <root>/_runs/<cache key>/<run id>.json    RunRecord: a trained run, or a WiSE-FT point of one
    <root>/_benches/<bench id>.json           BenchRecord: a benchmark's (or the demo's) folder and its runs

`<root>` is the folder holding the cache `<root>/<key>` the run trained on, so `robustkd serve` on that root
shows the run. A record holds the run's config and its whole metrics.json: readers never need the run folder.
Ids are the first 16 hex characters of sha256("<host>:<absolute folder>"): training again in the same folder
replaces the record. A run whose cache is a service URL posts its record to that service (`POST /v1/runs`).
Writers: the trainer (`robustkd.trainer.record`), `robustkd bench` and `robustkd demo`; reader: the service.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import socket
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from robustkd.shared import files

RUNS_DIR = "_runs"
BENCHES_DIR = "_benches"
ID_PATTERN = r"^[0-9a-f]{16}$"
KEY_PATTERN = r"^[0-9a-f]{64}$"
MAX_RECORD_BYTES = 8 << 20  # a larger record file is skipped unread
log = logging.getLogger("robustkd.registry")

# headline metrics of a run: name -> (evaluation split, metric) in its metrics.json
METRICS = {"id_acc": ("test", "accuracy"), "id_f1": ("test", "macro_f1"),
           "id_bal_acc": ("test", "balanced_accuracy"), "ood_acc": ("ood_test", "accuracy"),
           "ood_f1": ("ood_test", "macro_f1"), "ood_bal_acc": ("ood_test", "balanced_accuracy"),
           "ood_auroc": ("ood_test", "auroc"), "ood_ece": ("ood_test", "ece"),
           "heldout_acc": ("test_heldout", "accuracy"), "val_f1": ("validation", "macro_f1"),
           "val_heldout_f1": ("validation_heldout", "macro_f1")}
COSTS = ("train_s", "peak_rss_mb")  # from the run's train summary

Proportion = Annotated[float, Field(ge=0, le=1, strict=True)]  # strict: no booleans, no numbers as text
Count = Annotated[int, Field(ge=0, strict=True)]
Amount = Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)]


class SplitMetrics(BaseModel):
    """The figures of one evaluation split that pages show and plot; other keys pass unchecked."""

    model_config = ConfigDict(extra="allow")
    n: Count | None = None
    tokens: Count | None = None
    accuracy: Proportion | None = None
    balanced_accuracy: Proportion | None = None
    macro_f1: Proportion | None = None
    auroc: Proportion | None = None
    ece: Proportion | None = None
    exact_match: Proportion | None = None
    nll_per_token: Amount | None = None
    perplexity: Amount | None = None


class Costs(BaseModel):
    model_config = ConfigDict(extra="allow")
    train_s: Amount | None = None
    peak_rss_mb: Amount | None = None


class Metrics(BaseModel):
    """A run's metrics.json as a record checks it: the student's and the teacher's figures per split, the costs."""

    model_config = ConfigDict(extra="allow")
    student: dict[str, SplitMetrics] | None = None
    teacher: dict[str, SplitMetrics] | None = None
    train: Costs | None = None


def _checked(metrics: dict) -> dict:
    Metrics.model_validate(metrics)  # the dict itself is kept as written
    return metrics


class RunRecord(BaseModel):
    """One evaluated student: a trained run (`alpha` None) or a WiSE-FT point θ_α of one (`curve_of` its name)."""

    id: str = Field(pattern=ID_PATTERN)
    cache_key: str = Field(pattern=KEY_PATTERN)
    name: str = Field(max_length=200, description="Display name: `ours`, `ft+lora`, `wise-ft-0.5`, `ours-wise-0.5`.")
    method: str = Field(max_length=100)
    adapter: str = Field(max_length=20)
    seed: int
    alpha: float | None = None
    curve_of: str | None = Field(None, max_length=200, description="WiSE points: the fine-tuned run's name.")
    folder: str = Field(max_length=4096, description="The run folder, on `host`.")
    host: str = Field(max_length=255)
    created_at: str = Field(max_length=40)
    config: dict
    metrics: Annotated[dict, AfterValidator(_checked)] = Field(
        description="The run's metrics.json: student and teacher metrics per split (proportions in [0, 1], counts "
                    "integers), train cost.")

    def headline(self, who: str = "student") -> dict[str, float | None]:
        """The METRICS (and, for the student, COSTS) of this run, None where missing."""
        out = {k: number_at(self.metrics, who, split, name) for k, (split, name) in METRICS.items()}
        if who == "student":
            out |= {k: number_at(self.metrics, "train", k) for k in COSTS}
        return out


class BenchMember(BaseModel):
    name: str = Field(max_length=200)
    seed: int
    run_id: str = Field(pattern=ID_PATTERN)


class BenchRecord(BaseModel):
    """A benchmark (`results.json`, `report.md`, plots) or the demo (`report.md`, plot) in a folder on `host`."""

    id: str = Field(pattern=ID_PATTERN)
    kind: Literal["bench", "demo"]
    cache_key: str = Field(pattern=KEY_PATTERN)
    task: str
    folder: str = Field(max_length=4096, description="The bench's folder, an absolute path on `host`.")
    host: str
    created_at: str
    budget: str | None = None
    seeds: int
    methods: list[str]
    runs: list[BenchMember] = []

    @field_validator("folder")
    @classmethod
    def _absolute(cls, folder: str) -> str:
        if not (PurePosixPath(folder).is_absolute() or PureWindowsPath(folder).is_absolute()):
            raise ValueError(f"{folder!r} is not an absolute path")
        return folder


def number_at(d: object, *keys: str) -> float | None:
    """The finite number at d[k1][k2]..., or None when a level is missing or not a dict (records may be old)."""
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return float(d) if isinstance(d, int | float) and not isinstance(d, bool) and math.isfinite(d) else None


def record_id(folder: str | os.PathLike, host: str | None = None) -> str:
    """The id of the run (or bench) in `folder` on this host."""
    where = f"{host or socket.gethostname()}:{Path(folder).resolve()}"
    return hashlib.sha256(where.encode()).hexdigest()[:16]


def is_service(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def root_of(location: str) -> str:
    """The store root holding a cache location (`<root>/<key>`): a local folder or an fsspec URL."""
    if is_service(location):
        raise ValueError(f"{location} is a service URL: post its records to the service instead")
    if "://" in location:
        return location.rstrip("/").rsplit("/", 1)[0]
    return str(Path(location).resolve().parent)


def service_base(location: str) -> str:
    """`http://host:port` of a cache's service URL (`http://host:port/v1/caches/<key>`)."""
    return location.rstrip("/").split("/v1/caches/", 1)[0]


def _fs(root: str):  # noqa: ANN202 - (fsspec filesystem, path)
    import fsspec

    return fsspec.core.url_to_fs(root)


def _local(fs) -> bool:  # noqa: ANN001
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def _write(root: str, rel: str, record: BaseModel) -> None:
    fs, path = _fs(root)
    target = f"{path.rstrip('/')}/{rel}"
    if _local(fs):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        files.write_json_atomic(target, record)
    else:
        fs.pipe_file(target, files.json_bytes(record))


def write_run(root: str, record: RunRecord) -> None:
    _write(root, f"{RUNS_DIR}/{record.cache_key}/{record.id}.json", record)


def write_bench(root: str, record: BenchRecord) -> None:
    _write(root, f"{BENCHES_DIR}/{record.id}.json", record)


def _read_all(root: str, folder: str, model: type[BaseModel]) -> list:
    fs, path = _fs(root)
    try:
        names = sorted(fs.ls(f"{path.rstrip('/')}/{folder}", detail=False))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        if not name.endswith(".json") or files.TEMP_MARK in os.path.basename(name):
            continue
        try:  # a local record only from a regular file: a FIFO would hold the reading request forever
            raw = files.read_regular(name, MAX_RECORD_BYTES) if _local(fs) else fs.cat_file(name)
            out.append(model.model_validate_json(raw))
        except (ValidationError, ValueError, OSError) as e:
            log.warning("ignoring unreadable registry record %s: %s", name, e)
    return out


def run_caches(root: str) -> list[str]:
    """The cache keys with run records under `root`."""
    fs, path = _fs(root)
    try:
        return [os.path.basename(p.rstrip("/")) for p in fs.ls(f"{path.rstrip('/')}/{RUNS_DIR}", detail=False)]
    except FileNotFoundError:
        return []


def read_runs(root: str, cache_key: str | None = None) -> list[RunRecord]:
    """Every run record under `root` (of one cache with `cache_key`), oldest first; unreadable ones skipped."""
    keys = [cache_key] if cache_key is not None else run_caches(root)
    runs = [r for k in keys for r in _read_all(root, f"{RUNS_DIR}/{k}", RunRecord)]
    return sorted(runs, key=lambda r: (r.created_at, r.id))


def find_run(root: str, run_id: str) -> RunRecord | None:
    """The record `run_id` under whichever cache holds it, opening one record file, not every one; None if none."""
    return next((r for k in run_caches(root) if (r := read_run(root, k, run_id)) is not None), None)


def keeping_its_name(root: str, record: RunRecord) -> RunRecord:
    """`record` under the name (and curve) of the record of the same run it replaces, if there is one: a bench's
    run evaluated again (`robustkd eval`) keeps the name the bench gave it."""
    earlier = read_run(root, record.cache_key, record.id)
    return record if earlier is None else record.model_copy(update={"name": earlier.name, "curve_of": earlier.curve_of})


def read_run(root: str, cache_key: str, run_id: str) -> RunRecord | None:
    """The record `run_id` of the cache `cache_key` under `root`, or None where there is none or it is unreadable."""
    fs, path = _fs(root)
    name = f"{path.rstrip('/')}/{RUNS_DIR}/{cache_key}/{run_id}.json"
    try:
        raw = files.read_regular(name, MAX_RECORD_BYTES) if _local(fs) else fs.cat_file(name)
        return RunRecord.model_validate_json(raw)
    except FileNotFoundError:
        return None
    except (ValidationError, ValueError, OSError) as e:
        log.warning("ignoring unreadable registry record %s: %s", name, e)
        return None


def read_benches(root: str) -> list[BenchRecord]:
    """Every bench record under `root`, newest first."""
    return sorted(_read_all(root, BENCHES_DIR, BenchRecord), key=lambda b: (b.created_at, b.id), reverse=True)
