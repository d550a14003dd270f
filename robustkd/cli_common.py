"""What every CLI command shares: the stderr console, turning library errors into a message and exit code 2, and
options that are not config fields. Imports no torch."""

from __future__ import annotations

import inspect
import re
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from robustkd.bench import BenchConfig
from robustkd.options import OptionError
from robustkd.shared.schemas import CacheRequest
from robustkd.trainer.config import TrainConfig

console = Console(stderr=True, soft_wrap=True)
CONFIGS = (CacheRequest, TrainConfig, BenchConfig)


def flagify(msg: str) -> str:
    """Library messages name config fields (`label_column`); on the command line they are flags."""
    names = {n for model in CONFIGS for n in model.model_fields}
    msg = re.sub(r"needs ([a-z_]+(?:, [a-z_]+)*)", lambda m: "needs " + ", ".join(
        "--" + w.replace("_", "-") if w in names else w for w in m.group(1).split(", ")), msg)
    for name in sorted(names, key=len, reverse=True):
        if "_" in name:
            msg = re.sub(rf"(?<![\w-]){name}\b", "--" + name.replace("_", "-"), msg)
        else:
            msg = re.sub(rf"(^|; ){name}:", rf"\1--{name}:", msg)
    return msg


def fail(msg: str) -> NoReturn:
    console.print(f"[red]error:[/red] {escape(flagify(msg))}", soft_wrap=True, highlight=False)
    raise typer.Exit(2)


def user_errors() -> tuple[type[Exception], ...]:
    """Exceptions that mean bad input (a message for the user), not a bug (a traceback)."""
    from robustkd.shared.layout import CacheError
    from robustkd.shared.models import ModelFolderError
    from robustkd.shared.prompts import PromptError

    errors: list[type[Exception]] = [OptionError, CacheError, ModelFolderError, PromptError]
    try:
        from robustkd.export import ExportError
        from robustkd.predictor import PredictError
        from robustkd.teacher_service.model import ModelError
        from robustkd.teacher_service.precompute import PrecomputeError
        from robustkd.teacher_service.resolve import RequestError
        from robustkd.trainer.run import RunError
        from robustkd.trainer.student import StudentError
        from robustkd.trainer.train import TrainError

        errors += [ExportError, ModelError, PrecomputeError, PredictError, RequestError, RunError, StudentError,
                   TrainError]
    except ImportError:  # pragma: no cover - a partial install
        pass
    return tuple(errors)


def option(name: str, annotation: object, default: object, help_: str) -> inspect.Parameter:
    """An extra CLI-only option (not a config field)."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Option(default, "--" + name.replace("_", "-"), help=help_))
