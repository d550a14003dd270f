"""The method table: every named training recipe, in one place (docs/methods.md).

A method is a base method of the trainer (`TrainConfig.method`: the loss and its defaults) with the fields that
make it a recipe: adapter, λs, activation distance, head start, L2-SP α and unlabelled rows. The entry named after
each base method holds that base method's defaults. The trainer's config fills unset options from it, `robustkd
bench` and `robustkd demo` train its entries by name, and run records and the dashboard name runs with
`display_name`. Importing this module imports no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Base = Literal["ft", "lp-ft", "l2-sp", "ours", "online-kd"]
BASES: tuple[str, ...] = Base.__args__
Adapter = Literal["full", "lora"]
# learning rates that move a student in a few hundred steps: LoRA adapters need a larger one than full weights
LR_DEFAULT: dict[str, float] = {"full": 1e-4, "lora": 1e-3}
# the TrainConfig fields a method fixes (besides `method`, its base); everything else is a run's budget
RECIPE = ("adapter", "lambda_task", "lambda_distill", "lambda_act", "act_distance", "head_init", "l2sp",
          "unlabelled_groups")
SHORT = {"lambda_task": "λ1", "lambda_distill": "λ2", "lambda_act": "λ3", "act_distance": "act-distance",
         "head_init": "head-init", "unlabelled_groups": "unlabelled-groups"}


class Method(BaseModel):
    """One named recipe."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    base: Base = Field(description="The trainer's method (TrainConfig.method): which terms the loss has.")
    summary: str = Field(description="One line: what it trains, and against what.")
    adapter: Adapter = "full"
    lambda_task: float = 1.0
    lambda_distill: float = 0.0
    lambda_act: float = 0.0
    act_distance: Literal["l2", "ldifs"] = "l2"
    head_init: Literal["teacher", "random"] = "random"
    l2sp: float = 0.0
    unlabelled_groups: int = 0
    wise: str | None = Field(None, description="Prefix of its WiSE-FT points (`<wise>-<α>`); None: no curve.")
    separate: bool = Field(False, description="Uses information the others lack: reported beside them.")
    swept: bool = Field(False, description="`bench --sweep`'s chosen λ2, λ3 replace its own.")
    core: bool = Field(False, description="In the bench's default set.")
    demo: bool = Field(False, description="Trained by `robustkd demo`.")

    def train_args(self) -> dict:
        """The TrainConfig fields of this recipe."""
        return {"method": self.base, **{f: getattr(self, f) for f in RECIPE}}

    @property
    def curve(self) -> str | None:
        """Its curve's name in a bench's results: `wise-ft` for lp-ft's (WiSE-FT proper), else its own name."""
        return None if self.wise is None else "wise-ft" if self.wise == "wise-ft" else self.name


TABLE: tuple[Method, ...] = (
    Method(name="ft", base="ft", summary="Full fine-tuning: cross-entropy on clean ID rows, random head.", core=True,
           demo=True),
    Method(name="lp-ft", base="lp-ft", head_init="teacher", wise="wise-ft", core=True,
           summary="Linear probe, then fine-tune: the cache's head as the start, cross-entropy on clean ID rows."),
    Method(name="lora", base="ft", adapter="lora", core=True, demo=True,
           summary="LoRA fine-tuning: adapters and head trained with cross-entropy, the backbone frozen."),
    # λ3 = 0, chosen on validation data (benchmarks/ablate.py, docs/training.md): every activation term tried
    # scored below distillation alone; the term stays available (ours-hybrid, ours-ldifs; --lambda-act)
    Method(name="ours", base="ours", lambda_distill=1.0, head_init="teacher", wise="ours-wise", swept=True,
           core=True, demo=True,
           summary="Cross-entropy on clean rows + KL to the cached teacher on perturbed rows, the cache's head."),
    Method(name="ours-lora", base="ours", adapter="lora", lambda_distill=1.0, head_init="teacher", swept=True,
           core=True, summary="ours with LoRA adapters instead of every weight."),
    Method(name="l2-sp", base="l2-sp", l2sp=0.01,
           summary="ft with an L2 pull toward the pre-trained weights, α/2·‖θ−θ0‖²."),
    Method(name="online-kd", base="online-kd", lambda_distill=1.0, head_init="teacher",
           summary="ours with the teacher run on each batch in memory instead of read from the cache."),
    Method(name="ours-hybrid", base="ours", lambda_distill=1.0, lambda_act=0.1, head_init="teacher",
           summary="ours plus the activation term on the cached layers (λ3 = 0.1)."),
    Method(name="ours-ldifs", base="ours", lambda_distill=1.0, lambda_act=10.0, act_distance="ldifs",
           head_init="teacher", summary="ours plus the LDIFS feature distance on the cached layers (λ3 = 10)."),
    Method(name="ours-act-only", base="ours", lambda_distill=0.0, lambda_act=0.1, head_init="teacher",
           summary="The activation term alone (λ3 = 0.1) instead of distillation."),
    Method(name="ours-unlabelled", base="ours", lambda_distill=1.0, head_init="teacher", unlabelled_groups=8,
           wise="ours-unlabelled-wise", separate=True, swept=True,
           summary="ours plus 8 unlabelled target-domain inputs per batch for distillation (a separate setting)."),
)
METHODS: dict[str, Method] = {m.name: m for m in TABLE}


def _value(v: object) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def recipe_of(config: Mapping) -> dict:
    """The recipe fields of a run's config (its config.json); a field it lacks has its base method's default."""
    base = METHODS[config["method"]]
    return {f: config.get(f, getattr(base, f)) for f in RECIPE}


def display_name(config: Mapping) -> str:
    """A run's name from its config: the table's method with exactly its recipe (`lora` for ft with LoRA
    adapters); else the closest method of its base followed by the fields that differ, `ours[λ2=2,λ3=0.5]`.
    A config of an unknown base method keeps that name."""
    base = config.get("method")
    if base not in BASES:
        return str(base)
    have = recipe_of(config)

    def diff(m: Method) -> dict:
        return {f: v for f, v in have.items() if v != getattr(m, f)}

    closest = min((m for m in TABLE if m.base == base), key=lambda m: len(diff(m)))  # the first, of equals
    d = diff(closest)
    return closest.name + (f"[{','.join(f'{SHORT.get(f, f)}={_value(v)}' for f, v in d.items())}]" if d else "")


def wise_point(name: str, alpha: float) -> str:
    """The name of a WiSE-FT point of the run named `name`: `<its wise prefix>-<α>` (`wise-ft-0.5` for lp-ft),
    `<name>-wise-<α>` for a name without one."""
    m = METHODS.get(name)
    return f"{m.wise if m and m.wise else f'{name}-wise'}-{alpha:g}"


def curve_end(name: str) -> str | None:
    """The run a WiSE-FT point interpolates (`wise-ft-0.5` → `lp-ft`, `ours-wise-0.5` → `ours`); None if `name`
    is not a WiSE point."""
    for m in TABLE:
        if m.wise and name.startswith(f"{m.wise}-"):
            return m.name
    return name.rsplit("-wise-", 1)[0] if "-wise-" in name else None


def summary(name: str) -> str | None:
    """One line on what the run named `name` (a table name, a variant `ours[λ2=2]`, or a WiSE point) is."""
    if (end := curve_end(name)) is not None:
        what = summary(end)
        return f"WiSE-FT point of {end}: its weights interpolated toward the teacher's." + (f" {end}: {what}" if what
                                                                                             else "")
    m = METHODS.get(name.split("[", 1)[0])
    if m is None:
        return None
    return m.summary if m.name == name else f"{m.summary} Here with {name[len(m.name) + 1:-1]}."
