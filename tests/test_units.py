"""Small pure pieces, each against an independent computation: metrics, statistics, WiSE, schedule, locks."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from rich.console import Console
from sklearn.metrics import f1_score

from robustkd.options import OptionError, build, validation_message
from robustkd.progress import Progress
from robustkd.report import verdict
from robustkd.stats import macro_f1_weighted, paired_bootstrap
from robustkd.teacher_service.heads import select_c
from robustkd.teacher_service.precompute import file_lock
from robustkd.teacher_service.store import Store, remove_stale_temps
from robustkd.trainer.config import TrainConfig
from robustkd.trainer.metrics import activation_drift, expected_calibration_error
from robustkd.trainer.wise import interpolate


# ---- metrics ---------------------------------------------------------------------------------------
def test_ece_by_hand() -> None:
    # 4 rows; confidences 0.9, 0.9 (one right) and 0.6, 0.6 (both right); 15 equal bins
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    expected = 0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6)
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)
    perfect = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(perfect, np.array([0, 1])) == 0.0


def test_weighted_macro_f1_equals_sklearn_with_sample_weight() -> None:
    rng = np.random.default_rng(0)
    for k in (2, 3):
        labels, pred = rng.integers(0, k, 200), rng.integers(0, k, 200)
        w = rng.integers(0, 4, (5, 200)).astype(float)
        ours = macro_f1_weighted(pred, labels, w, k)
        ref = [f1_score(labels, pred, average="macro", labels=list(range(k)), sample_weight=wi, zero_division=0)
               for wi in w]
        np.testing.assert_allclose(ours, ref, atol=1e-12)
    # a class never present nor predicted scores 0, as sklearn's zero_division=0
    np.testing.assert_allclose(macro_f1_weighted(np.zeros(4), np.zeros(4), np.ones((1, 4)), 2), [0.5])


def test_paired_bootstrap_interval_contains_known_difference() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    good = np.where(rng.random(400) < 0.9, labels, 1 - labels)
    bad = np.where(rng.random(400) < 0.6, labels, 1 - labels)
    res = paired_bootstrap([good, good], [bad, bad], labels, 2, "accuracy", n_boot=500)
    assert res["diff"] == pytest.approx((good == labels).mean() - (bad == labels).mean())
    assert 0.2 < res["lo"] < res["diff"] < res["hi"] < 0.4
    same = paired_bootstrap([good], [good], labels, 2, "macro_f1", n_boot=200)
    assert same == {"diff": 0.0, "lo": 0.0, "hi": 0.0}
    flipped = paired_bootstrap([bad], [good], labels, 2, "accuracy", n_boot=500)
    assert flipped["hi"] < 0


def test_activation_drift_relative_to_teacher_norm() -> None:
    t = np.array([[3.0, 4.0], [0.0, 5.0]])  # norms 5, 5
    s = t + np.array([[1.0, 0.0], [0.0, -2.0]])  # distances 1, 2
    assert activation_drift({2: s}, {"layer_2": t}) == {"2": pytest.approx(1.5 / 5)}
    assert activation_drift({2: t.copy()}, {"layer_2": t}) == {"2": 0.0}


# ---- WiSE ------------------------------------------------------------------------------------------
def test_interpolation_endpoints_are_exact_and_midpoint_linear() -> None:
    a = {"w": torch.randn(3, 4), "b": torch.randn(3), "steps": torch.tensor(7)}
    b = {"w": torch.randn(3, 4), "b": torch.randn(3), "steps": torch.tensor(9)}
    assert all(torch.equal(interpolate(a, b, 0.0)[k], a[k]) for k in ("w", "b"))
    assert all(torch.equal(interpolate(a, b, 1.0)[k], b[k]) for k in a)
    torch.testing.assert_close(interpolate(a, b, 0.25)["w"], 0.75 * a["w"] + 0.25 * b["w"])
    assert interpolate(a, b, 0.5)["steps"] == 9  # integer buffers are not averaged
    with pytest.raises(ValueError, match="different tensors"):
        interpolate(a, {"w": b["w"]}, 0.5)


# ---- report sentences ------------------------------------------------------------------------------
def test_verdict_says_only_what_the_interval_supports() -> None:
    boot = {"ft": {"ood_test:macro_f1": {"diff": 0.05, "lo": 0.01, "hi": 0.09}},
            "lora": {"ood_test:macro_f1": {"diff": -0.04, "lo": -0.07, "hi": -0.01}},
            "lp-ft": {"ood_test:macro_f1": {"diff": 0.01, "lo": -0.02, "hi": 0.03}}}
    text = verdict(boot, {})
    assert "ours beats ft on OOD macro-F1 by +0.050 (95% CI +0.010 to +0.090)." in text
    assert "ours is worse than lora on OOD macro-F1: -0.040" in text
    assert "ours and lp-ft are not distinguishable" in text
    assert verdict({}, {}) == "No `ours` runs: nothing to compare."


# ---- teacher head, schedule --------------------------------------------------------------------------
def test_probe_c_selection_best_score_then_strongest_regularisation() -> None:
    assert select_c({1e-3: 0.7, 1e-2: 0.8, 1.0: 0.75}) == 1e-2
    assert select_c({1.0: 0.8, 1e-2: 0.8, 1e-4: 0.6}) == 1e-2


def test_lr_schedule_warms_up_from_zero_then_decays_to_zero() -> None:
    from robustkd.trainer.train import make_optimizer

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone, self.head = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)

    cfg = TrainConfig(cache="x", lr=1.0, head_lr=2.0, warmup=0.2)
    opt, sched = make_optimizer(cfg, Tiny(), total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr())
        opt.step()
        sched.step()
    # transformers' linear schedule: lr(step) = step / warmup during warm-up (0 at the first step), then linear
    assert [x[0] for x in lrs] == pytest.approx([0.0, 0.5, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8])
    assert [x[1] for x in lrs] == pytest.approx([2 * x[0] for x in lrs])


# ---- locks and temp files ------------------------------------------------------------------------------
LOCK_HOLDER = """
import sys, time
from robustkd.teacher_service.precompute import file_lock
from robustkd.teacher_service.store import Store
with file_lock(Store(sys.argv[1]), "x.lock") as got:
    print(got, flush=True)
    time.sleep(30)
"""


def test_file_lock_excludes_another_process(tmp_path) -> None:  # noqa: ANN001
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        with file_lock(Store(str(tmp_path)), "x.lock", blocking=False) as got:
            assert got is False
    finally:
        holder.kill()
        holder.wait()
    with file_lock(Store(str(tmp_path)), "x.lock", blocking=False) as got:  # released when its holder died
        assert got is True
    with file_lock(Store("memory://somewhere"), "x.lock", blocking=False) as got:
        assert got is True  # object stores: workers own disjoint shards, no lock


def test_stale_temps_of_dead_writers_are_removed_live_ones_kept(tmp_path) -> None:  # noqa: ANN001
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "rows").mkdir()
    stale = tmp_path / "rows" / f"shard-00001.arrow.tmp{dead.pid}"
    live = tmp_path / "rows" / f"shard-00002.arrow.tmp{os.getpid()}"
    other = tmp_path / "rows" / "notes.tmpx"
    for f in (stale, live, other):
        f.write_bytes(b"partial")
    assert remove_stale_temps(str(tmp_path)) == 1
    assert not stale.exists() and live.exists() and other.exists()


# ---- CLI plumbing ----------------------------------------------------------------------------------------
def test_progress_prints_lines_when_not_a_terminal() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=60)
    with Progress(console, "precompute", every=0.0) as p:
        p("writing shards", 10, 100)
        time.sleep(0.01)
        p("writing shards", 100, 100)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2 and "10/100 rows" in lines[0] and "100/100 rows" in lines[1]
    quiet = io.StringIO()
    with Progress(Console(file=quiet, force_terminal=False), "x", every=3600) as p:
        for i in range(50):
            p("s", i, 100)
    assert len(quiet.getvalue().splitlines()) == 1  # the first line only; the next is due an hour later


def test_options_split_lists_and_name_flags_in_errors() -> None:
    cfg = build(TrainConfig, {"cache": "c", "lora_targets": "q, v", "lr": None})
    assert cfg.lora_targets == ["q", "v"] and cfg.lr == 1e-4 and TrainConfig(cache="c", adapter="lora").lr == 1e-3
    with pytest.raises(OptionError, match="--lambda-act: Input should be greater than or equal to 0"):
        build(TrainConfig, {"cache": "c", "lambda_act": -1.0})
    try:
        TrainConfig(cache="c", method="ft", lambda_task=0.0)
    except ValueError as e:
        assert validation_message(e) == "lambda-task, lambda-distill and lambda-act are all 0: nothing to train"


def test_method_defaults_fill_unset_options_and_runs_reload_identically() -> None:
    ours = TrainConfig(cache="c")
    assert (ours.lambda_task, ours.lambda_distill, ours.lambda_act, ours.head_init, ours.dropout) == (
        1.0, 1.0, 0.0, "teacher", True)
    hybrid = TrainConfig(cache="c", lambda_act=0.1)
    assert hybrid.dropout is False  # activations are compared without dropout noise
    ft = TrainConfig(cache="c", method="ft", adapter="lora")
    assert (ft.lambda_distill, ft.lambda_act, ft.head_init, ft.dropout, ft.label) == (0.0, 0.0, "random", True,
                                                                                         "lora")
    assert TrainConfig(cache="c", method="l2-sp").l2sp == 0.01
    assert TrainConfig.model_validate_json(ours.model_dump_json()) == ours


def test_imbalance_is_judged_against_an_equal_share() -> None:
    from robustkd.shared.layout import imbalanced

    for n in range(1, 61):  # two classes: a class under 30% of the rows, for every split of up to 60 rows
        for k in range(n + 1):
            assert imbalanced([k, n - k]) == (min(k, n - k) < 0.30 * n), (k, n - k)
    assert not imbalanced([25, 25, 25, 25]) and not imbalanced([10] * 10)  # balanced, however many classes
    assert imbalanced([10, 30, 30, 30]) and not imbalanced([16, 28, 28, 28])  # under 60% of 25 rows: 15
    assert imbalanced([19, 40, 41]) and not imbalanced([25, 37, 38])
    assert imbalanced([0, 5, 5]) and not imbalanced([]) and not imbalanced([0, 0])


# ---- curves ----------------------------------------------------------------------------------------------
def test_curve_gap_on_known_curves() -> None:
    from robustkd.stats import best_height_from, curve_gap, curve_height

    wise = np.array([[0.70, 0.60], [0.75, 0.58], [0.80, 0.55]])
    above = wise + [0.0, 0.05]
    assert curve_gap(above, wise) == pytest.approx(0.05)
    assert curve_gap(wise, above) == pytest.approx(-0.05)
    # only the common ID range counts: a curve extending further changes nothing
    longer = np.vstack([above, [[0.90, 0.10]]])
    assert curve_gap(longer[:3], wise) == pytest.approx(0.05)
    assert np.isnan(curve_gap(np.array([[0.9, 0.5], [0.95, 0.4]]), wise))
    # order of the points does not matter; heights interpolate linearly between points
    assert curve_gap(above[::-1], wise) == pytest.approx(0.05)
    assert curve_height(wise, 0.725) == pytest.approx(0.59) and np.isnan(curve_height(wise, 0.9))
    assert best_height_from(wise, 0.76) == pytest.approx(0.58 - 0.03 * 0.2)
    assert np.isnan(best_height_from(wise, 0.85))


def test_curve_comparison_interval_on_synthetic_predictions(tmp_path) -> None:  # noqa: ANN001
    """Two curves of the same shape, one 10 points of OOD accuracy higher at every ID accuracy: the gap is positive
    and its interval excludes 0; the same curve against itself gives exactly 0."""
    from robustkd.analysis import ALPHAS, Predictions, curves

    rng = np.random.default_rng(0)
    labels = {"test": rng.integers(0, 2, 400), "ood_test": rng.integers(0, 2, 400)}

    def logits(lab: np.ndarray, acc: float) -> np.ndarray:
        right = rng.random(len(lab)) < acc
        pred = np.where(right, lab, 1 - lab)
        return np.stack([1.0 - pred, pred.astype(float)], 1)

    runs = []
    points = {"teacher": (0.60, 0.60), "lp-ft": (0.80, 0.50), "ours": (0.80, 0.60), "ft": (0.805, 0.55)}
    for i, a in enumerate(ALPHAS):
        points[f"wise-ft-{a}"] = (0.6 + 0.2 * a, 0.60 - 0.1 * a * (1 + i % 2) / 1.5)
        points[f"ours-wise-{a}"] = (0.6 + 0.2 * a, 0.60 + 0.1 * a)
    for method, (id_acc, ood_acc) in points.items():
        folder = tmp_path / method
        folder.mkdir()
        np.savez(folder / "predictions.npz", test=logits(labels["test"], id_acc),
                 ood_test=logits(labels["ood_test"], ood_acc))
        runs.append({"method": method, "seed": 0, "run": str(folder), "metrics": {}})
    c = curves(Predictions(runs, labels, 2))
    gap = c["ours_minus_wise_ft"]
    assert gap["lo"] > 0 and gap["diff"] > 0.05
    # no harm: ours' curve ends half a point below ft's ID accuracy, above ft's OOD macro-F1: it reaches ft's point
    assert c["goal"]["reaches_ft_point"] and c["goal"]["reaches_teacher_ood_near_ft_id"]
    same = [r if r["method"] not in points or not r["method"].startswith("ours") else
            {**r, "run": r["run"].replace("ours-wise", "wise-ft").replace("/ours", "/lp-ft")} for r in runs]
    assert curves(Predictions(same, labels, 2))["ours_minus_wise_ft"]["diff"] == pytest.approx(0.0)


def test_the_unlabelled_setting_stays_out_of_the_main_comparison(tmp_path) -> None:  # noqa: ANN001
    """ours-unlabelled (the best run on every split here) is in no main figure (table, curves, intervals, proxy
    and its picks) and has its own rows, curve gap and intervals against ours, ft and the teacher."""
    from robustkd.analysis import ALPHAS, compare
    from robustkd.trainer.metrics import classification_metrics

    rng = np.random.default_rng(0)
    splits = ("test", "ood_test", "test_heldout", "validation_heldout")
    labels = {s: rng.integers(0, 2, 300) for s in splits}

    def logits(lab: np.ndarray, acc: float) -> np.ndarray:
        pred = np.where(rng.random(len(lab)) < acc, lab, 1 - lab)
        return np.stack([1.0 - pred, pred.astype(float)], 1)

    # (ID accuracy, OOD and held-out-perturbed validation accuracy)
    points = {"teacher": (0.6, 0.6), "ft": (0.7, 0.6), "lp-ft": (0.7, 0.6), "ours": (0.7, 0.65),
              "ours-unlabelled": (0.7, 0.9)}
    for a in ALPHAS:
        points |= {f"wise-ft-{a}": (0.65, 0.6), f"ours-wise-{a}": (0.65, 0.63),
                   f"ours-unlabelled-wise-{a}": (0.65, 0.8)}
    runs = []
    for method, (id_acc, ood_acc) in points.items():
        for seed in (0, 1):
            folder = tmp_path / method / str(seed)
            folder.mkdir(parents=True)
            preds = {s: logits(labels[s], id_acc if s == "test" else ood_acc) for s in splits}
            np.savez(folder / "predictions.npz", **preds)
            student = {s: classification_metrics(preds[s], labels[s], ["no", "yes"]) for s in splits}
            runs.append({"method": method, "seed": seed, "run": str(folder),
                         "metrics": {"label_names": ["no", "yes"], "student": student}})
    out = compare(runs, labels, 2)
    assert not any(m.startswith("ours-unlabelled") for m in out["summary"])
    assert set(out["curves"]["curves"]) == {"wise-ft", "ours"} and "ft" in out["bootstrap"]
    assert "ours-unlabelled" not in out["bootstrap"]
    assert out["proxy"]["runs"] == 1 + 2 * (3 + 2 * len(ALPHAS))  # the teacher once, the others per seed
    assert not any(q[k].startswith("ours-unlabelled") for q in out["proxy"]["picks"] for k in ("picked", "best"))
    sep = out["separate"]
    assert set(sep["summary"]) == {"ours-unlabelled", *(f"ours-unlabelled-wise-{a}" for a in ALPHAS)}
    assert set(sep["bootstrap"]) == {"ours", "ft", "teacher"} and sep["curve_gap"]["lo"] > 0
    assert sep["bootstrap"]["ours"]["ood_test:macro_f1"]["lo"] > 0


def test_balanced_accuracy_equals_sklearn() -> None:
    from sklearn.metrics import balanced_accuracy_score

    from robustkd.trainer.metrics import balanced_accuracy

    rng = np.random.default_rng(1)
    labels, pred = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
    assert balanced_accuracy(pred, labels) == pytest.approx(balanced_accuracy_score(labels, pred))


def test_row_streams_lower_the_mmap_threshold_only_while_they_run() -> None:
    """glibc's threshold cannot be read back, so a recording libc stands in for it."""
    from robustkd.teacher_service.memory import HEAP_MMAP_THRESHOLD, M_ARENA_MAX, M_MMAP_THRESHOLD, Malloc

    class Libc:
        def __init__(self) -> None:
            self.calls: list[tuple] = []

        def mallopt(self, param: int, value: int) -> int:
            self.calls.append(("mallopt", param, value))
            return 1

        def malloc_trim(self, pad: int) -> int:
            self.calls.append(("trim",))
            return 1

    m = Malloc()
    m.libc = libc = Libc()
    m.tune(arenas=2, stream_threshold=4096)
    assert libc.calls == [("mallopt", M_ARENA_MAX, 2)]
    m.stream_started()
    m.stream_started()
    m.stream_ended()
    assert libc.calls[1:] == [("mallopt", M_MMAP_THRESHOLD, 4096)]  # set once, kept while one stream runs
    m.stream_ended()
    assert libc.calls[2:] == [("mallopt", M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD), ("trim",)]
    off = Malloc()
    off.libc = libc = Libc()
    off.tune(arenas=0, stream_threshold=0)
    off.stream_started()
    off.stream_ended()
    assert libc.calls == []


def test_diagnosis_flags_a_fine_tune_that_did_not_learn_the_task() -> None:
    """ft below the teacher on OOD *and* not above it on ID is a budget problem as much as a robustness one."""
    from robustkd.report import diagnosis_text

    loses = {"ood_macro_f1": {"diff": -0.18, "lo": -0.27, "hi": -0.09}, "loses": True, "gains": False}
    learned = diagnosis_text({**loses, "id_accuracy": {"diff": 0.05, "lo": 0.01, "hi": 0.09}})
    unlearned = diagnosis_text({**loses, "id_accuracy": {"diff": -0.04, "lo": -0.09, "hi": 0.01}})
    assert "loses OOD performance" in learned and "did not learn the task" not in learned
    assert "did not learn the task" in unlearned and "-0.040 (95% CI -0.090 to +0.010)" in unlearned


def test_a_report_without_robustness_to_preserve_recommends_the_plain_fine_tune() -> None:
    from robustkd.report import recommendation

    base = {"id_accuracy": {"diff": 0.05, "lo": 0.01, "hi": 0.09}, "gains": False}
    keeps = recommendation({**base, "ood_macro_f1": {"diff": 0.04, "lo": -0.002, "hi": 0.08}, "loses": False})
    assert keeps.startswith("**Recommendation: use the plain fine-tune (`ft`).**") and "\n" not in keeps
    assert "+0.040 (95% CI -0.002 to +0.080)" in keeps
    assert recommendation({**base, "ood_macro_f1": {"diff": -0.1, "lo": -0.2, "hi": -0.05}, "loses": True}) is None
    assert recommendation({}) is None


def test_comparisons_pair_only_the_seeds_both_methods_have(tmp_path) -> None:  # noqa: ANN001
    """ours has seed 0 only; ft, lp-ft and the WiSE-FT points have seeds 0 and 1, and their seed 1 is far better OOD.
    Seed for seed, ours beats ft and its curve lies above WiSE-FT's; set against the two-seed means it would look
    worse. Every paired comparison uses the seeds both sides have and says which."""
    from robustkd.analysis import ALPHAS, Predictions, compare
    from robustkd.report import bootstrap_table, curves_text, results_table, verdict
    from robustkd.trainer.metrics import classification_metrics

    rng = np.random.default_rng(0)
    splits = ("test", "ood_test", "test_heldout")
    labels = {s: rng.integers(0, 2, 400) for s in splits}

    def logits(lab: np.ndarray, acc: float) -> np.ndarray:
        pred = np.where(rng.random(len(lab)) < acc, lab, 1 - lab)
        return np.stack([1.0 - pred, pred.astype(float)], 1)

    # method -> per seed (ID accuracy, OOD accuracy)
    points = {"teacher": {0: (0.6, 0.6), 1: (0.6, 0.6)}, "ft": {0: (0.8, 0.55), 1: (0.8, 0.95)},
              "lp-ft": {0: (0.8, 0.5), 1: (0.8, 0.95)}, "ours": {0: (0.85, 0.72)}}
    for a in ALPHAS:
        points[f"wise-ft-{a}"] = {0: (0.6 + 0.2 * a, 0.6 - 0.1 * a), 1: (0.6 + 0.2 * a, 0.95)}
        points[f"ours-wise-{a}"] = {0: (0.6 + 0.25 * a, 0.6 + 0.12 * a)}
    runs, teacher = [], None
    for method, seeds in points.items():
        for seed, (id_acc, ood_acc) in seeds.items():
            folder = tmp_path / method / str(seed)
            if teacher is None or method != "teacher":  # the teacher: one evaluation recorded under every seed
                folder.mkdir(parents=True)
                preds = {s: logits(labels[s], id_acc if s == "test" else ood_acc) for s in splits}
                np.savez(folder / "predictions.npz", **preds)
                student = {s: classification_metrics(preds[s], labels[s], ["no", "yes"]) for s in splits}
                teacher = teacher or (folder if method == "teacher" else None)
            run = teacher if method == "teacher" else folder
            runs.append({"method": method, "seed": seed, "run": str(run),
                         "metrics": {"label_names": ["no", "yes"], "student": student}})
    out = compare(runs, labels, 2)
    p = Predictions(runs, labels, 2)
    ft = out["bootstrap"]["ft"]
    seed0 = p.boot("ours", "ood_test", "macro_f1", [0])[1] - p.boot("ft", "ood_test", "macro_f1", [0])[1]
    assert ft["seeds"] == [0] and ft["ood_test:macro_f1"]["diff"] == pytest.approx(seed0)
    assert ft["ood_test:macro_f1"]["lo"] > 0, ft
    assert out["bootstrap"]["teacher"]["seeds"] == [0]
    gap = out["curves"]["ours_minus_wise_ft"]
    assert gap["seeds"] == [0] and gap["lo"] > 0, gap
    assert out["curves"]["goal"]["seeds"] == [0] and out["curves"]["goal"]["reaches_ft_point"], out["curves"]
    assert out["diagnosis"]["seeds"] == [0, 1]  # ft − teacher: all of ft's seeds
    assert "| ft | " in bootstrap_table(out["bootstrap"]) and " | 0 |" in bootstrap_table(out["bootstrap"])
    table = results_table(out["summary"])
    assert "| ours | 1 | " in table and "| ft | 2 | " in table  # the seeds each row's mean is over
    goal = curves_text(out["curves"], out["diagnosis"])[1:]  # the goal and no-harm sentences: ft on ours' seeds
    assert len(goal) == 2 and all(" on seed 0)" in line for line in goal), goal
    # ours at a seed nobody else has: no paired comparison, and the reading says so
    alone = [r if r["method"] != "ours" else {**r, "seed": 2} for r in runs if not r["method"].startswith("ours-")]
    res = compare(alone, labels, 2)
    assert set(res["bootstrap"]) == {"teacher"} and res["bootstrap"]["teacher"]["seeds"] == [2]
    assert "ours shares no seed with ft, lp-ft," in verdict(res["bootstrap"], res["summary"])
