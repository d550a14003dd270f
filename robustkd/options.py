"""CLI options generated from pydantic config models: each field is one option, nothing is restated by hand.

`model_options(Model)` gives typer a signature with an option per field (its type, default and description);
`build(Model, values)` validates what typer parsed and raises `OptionError` with messages in terms of the
flags a user types (`--label-column: field required`), never Python reprs.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class OptionError(ValueError):
    """Bad command-line values; the message names the flags."""


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _is_list(annotation: Any) -> bool:
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    return typing.get_origin(annotation) is list or any(typing.get_origin(a) is list for a in args)


def _is_bool(annotation: Any) -> bool:
    return annotation is bool or set(typing.get_args(annotation)) == {bool, type(None)}


def _cli_type(annotation: Any) -> Any:
    """The type typer parses: lists are comma-separated strings (split in `build`), the rest as declared."""
    if _is_list(annotation):
        return str | None
    return annotation


def model_options(model: type[BaseModel], skip: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """One keyword-only typer option per field of `model` (fields in `skip` left out)."""
    params = []
    for name, f in model.model_fields.items():
        if name in skip:
            continue
        default = ... if f.is_required() else f.get_default(call_default_factory=True)
        if _is_list(f.annotation) and default is not None:
            default = ",".join(map(str, default))
        help_ = (f.description or "") + (" Comma-separated." if _is_list(f.annotation) else "")
        decl = f"{flag(name)}/--no-{flag(name)[2:]}" if _is_bool(f.annotation) else flag(name)
        params.append(inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, annotation=_cli_type(f.annotation),
            default=typer.Option(default, decl, help=help_, show_default=default not in (None, ...))))
    return params


def command(model: type[M], *extra: inspect.Parameter, skip: tuple[str, ...] = ()
            ) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorate `fn(cfg, **extra)`: typer sees the model's options plus `extra`; `fn` gets the validated model."""

    def deco(fn: Callable[..., None]) -> Callable[..., None]:
        extra_names = {p.name for p in extra}

        def wrapper(**kwargs: Any) -> None:
            values = {k: v for k, v in kwargs.items() if k not in extra_names}
            try:
                cfg = build(model, values)
            except OptionError as e:
                raise typer.BadParameter(str(e)) from None
            fn(cfg, **{k: kwargs[k] for k in extra_names})

        wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
        wrapper.__signature__ = inspect.Signature([*model_options(model, skip), *extra])  # typer reads this
        return wrapper

    return deco


def build(model: type[M], values: dict[str, Any]) -> M:
    """Validate parsed option values into `model`; lists given as "a,b" are split; unset options are left out."""
    data = {}
    for name, value in values.items():
        f = model.model_fields[name]
        if value is None and not f.is_required():
            continue
        if isinstance(value, str) and _is_list(f.annotation):
            value = [v.strip() for v in value.split(",") if v.strip()]
        data[name] = value
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise OptionError(validation_message(e)) from None


def validation_message(e: ValidationError) -> str:
    """`--flag: message` for each error; model-level errors as their message alone."""
    parts = []
    for err in e.errors():
        loc = [str(x) for x in err["loc"] if not isinstance(x, int)]
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{flag(loc[0])}: {msg}" if loc else msg)
    return "; ".join(parts)

