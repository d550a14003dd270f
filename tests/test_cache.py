"""Teacher cache: key, layout read back with plain pyarrow/zarr, fidelity to a fresh forward, resumption."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import zarr
from safetensors.numpy import load_file

from robustkd.shared import layout
from robustkd.shared.reader import CacheReader
from robustkd.shared.schemas import CacheRequest
from robustkd.teacher_service.model import Encoder
from robustkd.teacher_service.precompute import Cancelled, PrecomputeError, precompute
from robustkd.teacher_service.resolve import RequestError, resolve


def request(model_dir: Path, **kw) -> CacheRequest:  # noqa: ANN003
    base = dict(model=str(model_dir), task="sentiment-rt-drugs", limit=12, shard_rows=20, layers=[1, 2],
                head="linear-probe")
    return CacheRequest(**{**base, **kw})


@pytest.fixture(scope="module")
def built(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    root = tmp_path_factory.mktemp("cache")
    spec, task = resolve(request(tiny_model), str(tiny_model))
    enc = Encoder(str(tiny_model))
    m = precompute(spec, task, enc, root)
    return root, spec, task, enc, m


def test_cache_reads_back_with_plain_pyarrow_and_zarr(built) -> None:  # noqa: ANN001
    root, spec, task, enc, m = built
    folder = root / spec.cache_key()
    manifest = json.loads((folder / "manifest.json").read_text())
    n = manifest["n_rows"]
    # train and validation groups of 3, clean test and ood_test, then validation and test once more, held out
    assert n == 12 * 3 * 2 + 12 + 12 + 12 + 12
    tables = [pa.ipc.open_file(str(folder / f"rows/shard-{k:05d}.arrow")).read_all()
              for k in range(manifest["n_shards"])]
    rows = pa.concat_tables(tables)
    assert rows.num_rows == n
    assert rows.column("example_id").to_pylist() == list(range(n))
    g = zarr.open_group(str(folder / "targets.zarr"), mode="r")
    assert g["logits"].shape == (n, 2) and g["logits"].dtype == np.float32
    for i in (1, 2):
        assert g[f"layer_{i}"].shape == (n, 32) and g[f"layer_{i}"].dtype == np.float16
    assert g["logits"].chunks[0] == manifest["shard_rows"]
    splits = rows.column("split").to_pylist()
    present = [s for s in layout.SPLITS if s not in layout.OPTIONAL_SPLITS]
    assert [splits[manifest["splits"][s]["start"]] for s in present] == present
    assert "unlabelled" not in manifest["splits"]  # only when asked for
    assert manifest["label_counts"]["train"] == [rows.column("label").to_pylist()[:36:3].count(c) for c in (0, 1)]
    pert = rows.column("perturbation").to_pylist()
    assert pert[0] == "clean" and pert[1] != "clean" and pert[2] != "clean"
    assert rows.column("parent_id").to_pylist()[:3] == [0, 0, 0]
    assert rows.column("text").to_pylist()[1] != rows.column("text").to_pylist()[0]
    # held-out rows: each clean test row once more, under a transform the recipe never uses
    held, test = manifest["splits"]["test_heldout"], manifest["splits"]["test"]
    parents = rows.column("parent_id").to_pylist()[held["start"]:held["stop"]]
    assert parents == list(range(test["start"], test["stop"]))
    names = set(rows.column("perturbation").to_pylist()[held["start"]:held["stop"]])
    assert names and not names & {"clean", *spec.perturbations.transforms}
    assert names <= set(spec.perturbations.heldout_transforms)
    texts = rows.column("text").to_pylist()
    assert sum(texts[i] != texts[p] for i, p in zip(range(held["start"], held["stop"]), parents, strict=True)) > 6


def test_cached_logits_equal_fresh_forward(built) -> None:  # noqa: ANN001
    root, spec, task, enc, m = built
    folder = root / spec.cache_key()
    rows = CacheReader(str(folder)).read_rows(0, m.n_rows)
    head = load_file(str(folder / "head.safetensors"))
    ids = rows.rows.column("input_ids").to_pylist()
    fresh = enc.forward_ids(ids[:40], (1, 2), "mean")
    logits = fresh.features.numpy() @ head["weight"].T + head["bias"]
    np.testing.assert_allclose(rows.targets["logits"][:40], logits, atol=1e-4)
    np.testing.assert_allclose(rows.targets["layer_1"][:40], fresh.layers[1].numpy(), atol=2e-2, rtol=1e-2)
    # the stored token ids are the tokenisation of the stored text
    text = rows.rows.column("text").to_pylist()[5]
    assert enc.tokenize([text], 128)[0] == ids[5]


def test_same_request_same_key_and_returns_at_once(built, tiny_model: Path, tmp_path: Path) -> None:  # noqa: ANN001
    root, spec, task, enc, m = built
    spec2, _ = resolve(request(tiny_model), str(tiny_model))
    assert spec2.cache_key() == spec.cache_key()
    again = precompute(spec2, task, enc, root)
    assert again == m
    # moving the model folder does not change the key; changing what shapes the bytes does
    moved = tmp_path / "moved"
    shutil.copytree(tiny_model, moved)
    assert resolve(request(moved), str(moved))[0].cache_key() == spec.cache_key()
    for change in ({"severities": [5]}, {"layers": [2]}, {"limit": 11}, {"perturb_seed": 1},
                   {"pooling": "cls"}, {"variants": 1}):
        assert resolve(request(tiny_model, **change), str(tiny_model))[0].cache_key() != spec.cache_key()


def test_reader_verifies_checksums_and_fsspec_url(built, tmp_path: Path) -> None:  # noqa: ANN001
    import fsspec

    root, spec, task, enc, m = built
    src = root / spec.cache_key()
    fs = fsspec.filesystem("memory")
    for f in src.rglob("*"):
        if f.is_file():
            fs.pipe_file(f"/c/{f.relative_to(src)}", f.read_bytes())
    r = CacheReader("memory://c")
    local = CacheReader(str(src))
    a, b = r.read_shard(1), local.read_shard(1)
    assert a.rows.equals(b.rows)
    np.testing.assert_array_equal(a.targets["logits"], b.targets["logits"])
    # corrupt one chunk: the error names the shard's file
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    chunk = bad / layout.chunk_path("layer_2", 1)
    chunk.write_bytes(chunk.read_bytes()[:-3] + b"xyz")
    with pytest.raises(layout.CacheError, match="layer_2/c/1/0"):
        CacheReader(str(bad)).read_shard(1)


def test_interrupted_job_never_looks_complete_and_resumes_identically(built, tmp_path: Path) -> None:  # noqa: ANN001
    root, spec, task, enc, m = built
    folder = tmp_path / spec.cache_key()

    def written() -> int:
        return len(list((folder / "shards").glob("*.json")))

    with pytest.raises(Cancelled):
        precompute(spec, task, enc, tmp_path, should_stop=lambda: written() >= 2)
    assert not (folder / "manifest.json").exists()
    assert 2 <= written() < m.n_shards
    with pytest.raises(layout.CacheError, match="incomplete"):
        CacheReader(str(folder))
    resumed = precompute(spec, task, enc, tmp_path)
    assert [s.model_dump() for s in resumed.shards] == [s.model_dump() for s in m.shards]


def test_bad_requests_name_the_field(tiny_model: Path, tmp_path: Path) -> None:
    cases = [
        (dict(model=str(tmp_path / "nope")), "model"),
        (dict(task="no-such-task"), "no-such-task"),
        (dict(transforms=["nope"]), "transforms"),
        (dict(layers=[7]), "layers"),
        (dict(task="arrests-year", transforms=["domain_swap"]), "domain"),
    ]
    for kw, word in cases:
        with pytest.raises(RequestError, match=word):
            resolve(request(tiny_model, **kw), str(tiny_model))
    bad = tmp_path / "f.csv"
    bad.write_text("text,label,site\nhello there,a,x\nbye now,b,x\n")
    with pytest.raises(RequestError, match="nolabel"):
        resolve(request(tiny_model, task="file", path=str(bad), text_column="text", label_column="nolabel",
                        domain_column="site", id_domains=["x"], ood_domains=["y"]), str(tiny_model))


@pytest.mark.slow
def test_linear_probe_beats_majority_on_id_validation(minilm: Path, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    spec, task = resolve(CacheRequest(task="sentiment-rt-drugs", limit=400, variants=0, layers=[6],
                                      head="linear-probe"),
                         str(minilm))
    m = precompute(spec, task, Encoder(str(minilm)), tmp_path)
    val = CacheReader(str(tmp_path / m.key)).read_split("validation")
    labels = np.array(val.rows.column("label").to_pylist())
    acc = float((val.targets["logits"].argmax(1) == labels).mean())
    majority = max(labels.mean(), 1 - labels.mean())
    assert acc > majority + 0.05, (acc, majority)


def test_user_file_through_the_cli(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from robustkd.cli import app

    rng = np.random.default_rng(0)
    lines = ["note,outcome,clinic"]
    for i in range(60):
        word = "good" if i % 2 else "bad"
        lines.append(f"patient {i} felt {word} after visit {rng.integers(1, 9)},{word},{'A' if i < 40 else 'B'}")
    csv = tmp_path / "visits.csv"
    csv.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("ROBUSTKD_CACHE_ROOT", str(tmp_path / "cache"))
    args = ["precompute", "--task", "file", "--path", str(csv), "--text-column", "note", "--label-column", "outcome",
            "--domain-column", "clinic", "--id-domains", "A", "--ood-domains", "B", "--model", str(tiny_model),
            "--layers", "1,2", "--transforms", "keyboard_typo,numeric_jitter"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    key = res.output.split("key: ")[1].split()[0]
    m = CacheReader(str(tmp_path / "cache" / key)).manifest
    assert m.label_names == ["bad", "good"] and m.splits["ood_test"].stop - m.splits["ood_test"].start == 20
    bad = CliRunner().invoke(app, [*args[:-2], "--transforms", "nope"])
    assert bad.exit_code == 2 and "transforms" in bad.output and "Traceback" not in bad.output
    # errors name the flags a user types, not the fields behind them
    missing = CliRunner().invoke(app, ["precompute", "--task", "file", "--model", str(tiny_model)])
    assert missing.exit_code == 2 and "needs --path, --label-column, --domain-column" in missing.output, missing.output


def test_neighbour_table_is_built_once_per_model(tiny_model: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from robustkd.teacher_service import neighbours

    builds = []
    real = neighbours.build_neighbours
    monkeypatch.setattr(neighbours, "build_neighbours", lambda *a, **kw: builds.append(1) or real(*a, **kw))
    monkeypatch.setattr(neighbours, "_memo", {})
    enc = Encoder(str(tiny_model))
    for seed in (0, 1):  # two caches of one model in one process: one build
        spec, task = resolve(request(tiny_model, perturb_seed=seed, limit=4, shard_rows=60), str(tiny_model))
        precompute(spec, task, enc, str(tmp_path))
    assert len(builds) == 1 and len(list((tmp_path / "_neighbours").iterdir())) == 1
    monkeypatch.setattr(neighbours, "_memo", {})  # a later process: the table comes from the cache root
    spec, task = resolve(request(tiny_model, perturb_seed=2, limit=4, shard_rows=60), str(tiny_model))
    precompute(spec, task, enc, str(tmp_path))
    assert len(builds) == 1


def test_compute_placement_is_in_the_key_and_enforced(built, tmp_path: Path) -> None:  # noqa: ANN001
    root, spec, task, enc, m = built
    assert (spec.teacher.device_type, spec.teacher.compute_dtype) == ("cpu", "float32")
    gpu = spec.model_copy(update={"teacher": spec.teacher.model_copy(update={"device_type": "cuda",
                                                                             "compute_dtype": "bfloat16"})})
    assert gpu.cache_key() != spec.cache_key()
    with pytest.raises(PrecomputeError, match="runs on cpu in float32.*says cuda in bfloat16"):
        precompute(gpu, task, enc, str(tmp_path))


def test_the_compute_dtype_asked_for_is_recorded_and_used(tiny_model: Path, tmp_path: Path) -> None:
    """--compute-dtype overrides the device's default (bfloat16 on CUDA, float32 on CPU): recorded in the spec and
    key, and the teacher runs in it (here bfloat16 autocast on the CPU: close to float32's activations, not equal)."""
    from robustkd.teacher_service.local import precompute_local
    from robustkd.teacher_service.settings import Settings

    on_gpu, _ = resolve(request(tiny_model, compute_dtype="float32"), str(tiny_model), placement=("cuda", "bfloat16"))
    assert (on_gpu.teacher.device_type, on_gpu.teacher.compute_dtype) == ("cuda", "float32")
    settings = Settings(cache_root=str(tmp_path), model=str(tiny_model), threads=1)
    full, half = (precompute_local(request(tiny_model, head="zero-shot", compute_dtype=d), settings)
                  for d in ("auto", "bfloat16"))
    assert (full.manifest.spec.teacher.compute_dtype, half.manifest.spec.teacher.compute_dtype) == ("float32",
                                                                                                    "bfloat16")
    assert full.key != half.key
    a, b = (CacheReader(c.location).read_split("train").targets["layer_2"] for c in (full, half))
    assert not np.array_equal(a, b) and np.abs(a - b).max() < 0.1 * np.abs(a).max()


def test_arguments_are_checked_before_the_long_work(tiny_model: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from robustkd.cli import app
    from robustkd.teacher_service import resolve as resolve_module

    monkeypatch.setenv("ROBUSTKD_CACHE_ROOT", str(tmp_path / "cache"))
    res = CliRunner().invoke(app, ["precompute", "--model", str(tiny_model), "--limit", "4",
                                   "--key-file", str(tmp_path / "no" / "such" / "key")])
    assert res.exit_code == 2 and "--key-file: the folder" in res.output, res.output
    assert not (tmp_path / "cache").exists()  # nothing was computed
    # an unusable model (here a folder holding only a GGUF file) is named before any data file is read
    gguf_only = tmp_path / "gguf-only"
    gguf_only.mkdir()
    (gguf_only / "model.Q4.gguf").write_bytes(b"GGUF")
    monkeypatch.setattr(resolve_module, "load_user_file", lambda *a, **kw: pytest.fail("data read first"))
    with pytest.raises(RequestError, match="model: .*gguf-only"):
        resolve(CacheRequest(model=str(gguf_only), task="file", path=str(tmp_path / "x.csv"), label_column="y",
                             domain_column="d", id_domains=["a"], ood_domains=["b"], text_column="t"), str(tiny_model))


def test_piped_cli_output_keeps_paths_and_class_names_whole(tiny_model: Path, built, tmp_path: Path,  # noqa: ANN001
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from robustkd.cli import app

    root, spec, task, enc, m = built
    deep = tmp_path / ("a-rather-long-folder-name-" * 3) / "cache"
    monkeypatch.setenv("ROBUSTKD_CACHE_ROOT", str(deep))
    res = CliRunner().invoke(app, ["precompute", "--model", str(tiny_model), "--limit", "12", "--shard-rows", "20",
                                   "--layers", "1,2"])
    assert res.exit_code == 0, res.output
    assert f"location: {deep}/" in res.output  # one line, not wrapped at 80 columns
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--cache", str(root / m.key), "--out", str(run), "--max-steps", "1",
                                   "--batch-groups", "4", "--threads", "1"])
    assert res.exit_code == 0, res.output
    for word in ("pred. negative", "pred. positive", "true positive", "test_heldout", "validation_heldout"):
        assert word in res.output, (word, res.output)


def test_progress_only_goes_up_across_stages(built, tmp_path: Path) -> None:  # noqa: ANN001
    """The head's shards are forwarded first, then every shard is written: the rows done a job shows (and the
    dashboard's live table) never go back when the second stage starts."""
    _, spec, task, enc, m = built
    seen: list[tuple[str, int, int]] = []
    precompute(spec, task, enc, tmp_path, progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert {s for s, _, _ in seen} >= {"forward (train, validation)", "forward and write", "done"}
    done = [d for _, d, _ in seen]
    assert done == sorted(done) and done[-1] == m.n_rows


def test_default_head_follows_the_task_kind(tiny_model: Path, tmp_path: Path) -> None:
    """head auto: zero-shot prototypes for an encoder on a built-in text task, the probe for tabular rows, user
    files and causal LMs; an explicit head is kept."""
    from robustkd.testing import make_tiny_llama

    def head(model: Path, **kw) -> str:  # noqa: ANN003
        return resolve(request(model, **{"head": "auto", **kw}), str(model))[0].teacher.head

    csv = tmp_path / "notes.csv"
    csv.write_text("text,label,site\n" + "".join(f"note {i},{'ab'[i % 2]},{'xy'[i // 20]}\n" for i in range(40)))
    user = dict(task="file", path=str(csv), text_column="text", label_column="label", domain_column="site",
                id_domains=["x"], ood_domains=["y"])
    assert head(tiny_model) == "zero-shot"
    assert head(tiny_model, task="arrests-year") == "linear-probe"
    assert head(tiny_model, **user) == "linear-probe"
    assert head(tiny_model, head="linear-probe") == "linear-probe"
    llama = make_tiny_llama(tmp_path / "llama")
    assert head(llama) == "linear-probe"
    assert head(llama, task="sentiment-answer", max_response_tokens=4) == "model"


def test_a_worker_that_writes_the_manifest_reports_its_own_rows_and_rate(tiny_model: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Static scale-out: the last worker writes the manifest with the timings of its run; the figures say which rows
    they cover, not the cache's total at one worker's rate."""
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from robustkd.cli import app
    from robustkd.teacher_service.app import create_app
    from robustkd.teacher_service.settings import Settings

    monkeypatch.setenv("ROBUSTKD_CACHE_ROOT", str(tmp_path))
    args = ["precompute", "--model", str(tiny_model), "--limit", "12", "--shard-rows", "9", "--layers", "1,2",
            "--workers", "2", "--worker"]
    first = CliRunner().invoke(app, [*args, "0"])
    assert first.exit_code == 0 and "my shards are written" in first.output, first.output
    last = CliRunner().invoke(app, [*args, "1"])
    assert last.exit_code == 0, last.output
    m = CacheReader(str(tmp_path / last.output.split("key: ")[1].split()[0])).manifest
    assert 0 < m.timings["rows"] < m.n_rows
    mine = f"wrote {m.n_rows} rows in {m.n_shards} shards; this process computed {m.timings['rows']:.0f} of them"
    assert mine in last.output, last.output
    with TestClient(create_app(Settings(cache_root=str(tmp_path), model=str(tiny_model), threads=1))) as client:
        page = client.get(f"/caches/{m.key}").text
    assert f"the last of several workers) computed {m.timings['rows']:.0f} of the rows" in page, page
