"""The perturbation registry: deterministic text transforms that probe a frozen teacher off its distribution.

Every transform is a pure function of ``(text, rng, severity, ctx)``; :func:`apply` derives the rng from
``(seed, example_id, name, variant)`` with SHA-256 so cached teacher outputs can be recomputed bit-for-bit in
any process. The built-in transforms live in `transforms`; new ones register with ``@register(...)``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, fields

from robustkd.shared.seeding import python_rng
from robustkd.teacher_service import transforms
from robustkd.teacher_service.transforms import PerturbContext, TransformFn

MIN_SEVERITY = 1
MAX_SEVERITY = transforms.MAX_SEVERITY


class PerturbationError(ValueError):
    """Invalid perturbation request (unknown transform, bad severity, missing context, ...)."""


@dataclass(frozen=True)
class TransformInfo:
    """Registry entry describing one transform."""

    name: str
    family: str
    needs: tuple[str, ...]
    help: str
    fn: TransformFn


REGISTRY: dict[str, TransformInfo] = {}

_CTX_FIELDS: frozenset[str] = frozenset(f.name for f in fields(PerturbContext))


def register(
    name: str, *, family: str, help: str, needs: tuple[str, ...] = ()
) -> Callable[[TransformFn], TransformFn]:
    """Decorator adding ``fn`` to :data:`REGISTRY` under ``name``."""
    if not isinstance(name, str) or not name:
        raise PerturbationError(f"transform name must be a non-empty string, got {name!r}")
    if name in REGISTRY:
        raise PerturbationError(f"transform name {name!r} is already registered")
    unknown = [n for n in needs if n not in _CTX_FIELDS]
    if unknown:
        raise PerturbationError(
            f"transform {name!r} has unknown needs {unknown} (PerturbContext fields: {sorted(_CTX_FIELDS)})"
        )

    def deco(fn: TransformFn) -> TransformFn:
        # Re-check at decoration time: two decorators with the same name may be created before either is applied.
        if name in REGISTRY:
            raise PerturbationError(f"transform name {name!r} is already registered")
        REGISTRY[name] = TransformInfo(name=name, family=family, needs=tuple(needs), help=help, fn=fn)
        return fn

    return deco


for _b in transforms.BUILTIN:
    register(_b.name, family=_b.family, help=_b.help, needs=_b.needs)(_b.fn)


def get(name: str) -> TransformInfo:
    """Look up a transform by name."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(REGISTRY))
        raise PerturbationError(f"unknown transform {name!r} (known: {known})") from None


def describe() -> list[TransformInfo]:
    """All registered transforms sorted by family, then name."""
    return sorted(REGISTRY.values(), key=lambda t: (t.family, t.name))


def heldout_transforms(recipe: tuple[str, ...]) -> tuple[str, ...]:
    """Transforms a recipe never uses and that need no model resources: the held-out evaluation shift."""
    return tuple(sorted(n for n, t in REGISTRY.items() if n not in recipe and not t.needs))


def transform_rng(seed: int, example_id: str, name: str, variant: int = 0) -> random.Random:
    """Process-independent rng for one (seed, example, transform, variant)."""
    return python_rng(seed, example_id, name, variant)


def apply(
    name: str,
    text: str,
    *,
    seed: int,
    example_id: str,
    severity: int,
    variant: int = 0,
    ctx: PerturbContext | None = None,
) -> str:
    """Apply transform ``name`` to ``text`` deterministically."""
    info = get(name)
    if not isinstance(text, str):
        raise PerturbationError(f"text must be str, got {type(text).__name__}")
    # bool is an int subclass; severity=True would silently mean 1.
    if (
        isinstance(severity, bool)
        or not isinstance(severity, int)
        or not (MIN_SEVERITY <= severity <= MAX_SEVERITY)
    ):
        raise PerturbationError(
            f"severity must be an int in {MIN_SEVERITY}..{MAX_SEVERITY}, got {severity!r}"
        )
    ctx = ctx if ctx is not None else PerturbContext()
    for need in info.needs:
        if not getattr(ctx, need):
            raise PerturbationError(f"transform {name!r} needs {need} (pass ctx=PerturbContext({need}=...))")
    rng = transform_rng(seed, example_id, name, variant)
    return info.fn(text, rng, severity, ctx)
