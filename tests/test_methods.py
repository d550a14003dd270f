"""The method table: the trainer's defaults, the bench's and demo's runs and the runs' names all come from it."""

from __future__ import annotations

import pytest

from robustkd import analysis, bench, demo
from robustkd.shared.methods import (
    BASES,
    LR_DEFAULT,
    METHODS,
    RECIPE,
    TABLE,
    curve_end,
    display_name,
    summary,
    wise_point,
)
from robustkd.trainer.config import TrainConfig


def recipe(cfg: TrainConfig) -> dict:
    return {"method": cfg.method, **{f: getattr(cfg, f) for f in RECIPE}}


def test_each_base_method_takes_its_defaults_from_its_entry() -> None:
    for base in BASES:
        entry = METHODS[base]
        assert entry.base == base and entry.adapter == "full"
        assert recipe(TrainConfig(cache="c", method=base)) == entry.train_args()


def test_every_entry_is_a_valid_config_and_named_back_by_display_name() -> None:
    assert len(METHODS) == len(TABLE)
    for m in TABLE:
        cfg = TrainConfig(cache="c", **m.train_args())
        assert recipe(cfg) == m.train_args()
        assert display_name(cfg.model_dump()) == cfg.label == m.name
        assert summary(m.name) == m.summary


def test_one_name_for_lora_and_variants_named_by_what_differs() -> None:
    assert display_name(TrainConfig(cache="c", method="ft", adapter="lora").model_dump()) == "lora"
    assert display_name(TrainConfig(cache="c", adapter="lora").model_dump()) == "ours-lora"
    assert display_name(TrainConfig(cache="c", lambda_distill=2.0, lambda_act=0.5).model_dump()) == "ours[λ2=2,λ3=0.5]"
    assert display_name(TrainConfig(cache="c", lambda_act=1.0, act_distance="ldifs").model_dump()) == \
        "ours-ldifs[λ3=1]"
    assert display_name(TrainConfig(cache="c", method="ft", head_init="teacher").model_dump()) == \
        "ft[head-init=teacher]"
    # a config.json without the newer fields has its base method's values; an unknown method keeps its name
    assert display_name({"method": "ours", "adapter": "lora"}) == "ours-lora"
    assert display_name({"method": "magic"}) == "magic"
    assert summary("ours[λ2=2]").endswith("Here with λ2=2.")


def test_wise_points_are_named_and_traced_back_by_the_table() -> None:
    assert [wise_point(n, 0.5) for n in ("lp-ft", "ours", "ours-unlabelled", "ours-lora", "ours[λ2=2]")] == [
        "wise-ft-0.5", "ours-wise-0.5", "ours-unlabelled-wise-0.5", "ours-lora-wise-0.5", "ours[λ2=2]-wise-0.5"]
    for name in ("lp-ft", "ours", "ours-unlabelled", "ours-lora", "ours[λ2=2]"):
        assert curve_end(wise_point(name, 0.25)) == name
    assert curve_end("ours") is None and curve_end("teacher") is None
    assert analysis.CURVES == {"wise-ft": ("lp-ft", "wise-ft"), "ours": ("ours", "ours-wise"),
                               "ours-unlabelled": ("ours-unlabelled", "ours-unlabelled-wise")}
    assert analysis.is_separate("ours-unlabelled") and analysis.is_separate("ours-unlabelled-wise-0.5")
    assert not analysis.is_separate("ours") and not analysis.is_separate("ours-wise-0.5")


def test_bench_and_demo_train_table_entries() -> None:
    assert bench.CORE == ("ft", "lp-ft", "lora", "ours", "ours-lora")
    assert demo.DEMO_METHODS == ("ft", "lora", "ours")
    # the demo's LoRA run uses the documented LoRA learning rate
    assert TrainConfig(cache="c", **METHODS["lora"].train_args()).lr == LR_DEFAULT["lora"] == 1e-3
    with pytest.raises(ValueError, match="unknown"):
        bench.BenchConfig(methods=["ft-lora"])


def test_the_sweeps_lambdas_replace_only_those_of_the_swept_methods() -> None:
    """bench --sweep chooses λ2, λ3 for ours; the variants with λs of their own keep them."""
    chosen = {"lambda_distill": 4.0, "lambda_act": 0.5}

    def lambdas(name: str) -> tuple[float, float]:
        cfg = TrainConfig(cache="c", **bench.run_args(METHODS[name], {"epochs": 1}, chosen, seed=0))
        return cfg.lambda_distill, cfg.lambda_act

    assert {n: lambdas(n) for n in ("ours", "ours-lora", "ours-unlabelled")} == dict.fromkeys(
        ("ours", "ours-lora", "ours-unlabelled"), (4.0, 0.5))
    assert {n: lambdas(n) for n in ("ours-hybrid", "ours-ldifs", "ours-act-only", "ft", "online-kd")} == {
        "ours-hybrid": (1.0, 0.1), "ours-ldifs": (1.0, 10.0), "ours-act-only": (0.0, 0.1), "ft": (0.0, 0.0),
        "online-kd": (1.0, 0.0)}


def test_bench_budget_takes_the_bench_overrides() -> None:
    medium = bench.run_budget(bench.BenchConfig(task="sentiment-rt-drugs"))
    assert (medium["epochs"], medium["batch_groups"]) == (1, 16)
    more = bench.run_budget(bench.BenchConfig(task="sentiment-rt-drugs", epochs=3, batch_groups=8, adapter="lora"))
    assert (more["epochs"], more["batch_groups"], more["adapter"]) == (3, 8, "lora")
