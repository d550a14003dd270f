"""benchmarks/ablate.py's variants train what their names say, whatever the method's defaults are."""

from __future__ import annotations

import importlib.util
import re

from robustkd.trainer.config import TrainConfig
from tests.conftest import REPO


def test_variant_names_match_their_configs() -> None:
    spec = importlib.util.spec_from_file_location("ablate", REPO / "benchmarks" / "ablate.py")
    ablate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablate)
    wrong = []
    for name, extra in ablate.SETS["ours"].items():
        cfg = TrainConfig(cache="x", **{"method": "ours", **extra})
        for term, field in (("l2", "lambda_distill"), ("l3", "lambda_act")):
            said = re.search(rf"\b{term}=([0-9.]+)", name)
            if said and float(said.group(1)) != getattr(cfg, field):
                wrong.append(f"{name}: {field} = {getattr(cfg, field)}")
        if "act only" in name and not (cfg.lambda_distill == 0 and cfg.lambda_act > 0):
            wrong.append(f"{name}: λ2 = {cfg.lambda_distill}, λ3 = {cfg.lambda_act}")
    assert not wrong, wrong
