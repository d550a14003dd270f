"""The dependency rules of docs/architecture.md, checked on the real import graph (lazy imports included)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

FOLDERS = {"robustkd": "robustkd", "shared": "robustkd.shared", "teacher_service": "robustkd.teacher_service",
           "trainer": "robustkd.trainer"}
ENTRY_POINTS = {"robustkd.__main__", "robustkd.trainer.__main__"}


def modules() -> dict[str, Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for f in sorted((REPO / folder).glob("*.py")):
            out[package if f.stem == "__init__" else f"{package}.{f.stem}"] = f
    return out


def imports(path: Path) -> set[str]:
    """robustkd modules a file imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    mods = modules()
    return {m for m in found if m in mods}


def graph() -> dict[str, set[str]]:
    return {m: imports(p) - {m} for m, p in modules().items()}


def reachable(g: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for n in g[todo.pop()] - seen:
            seen.add(n)
            todo.append(n)
    return seen


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ("shared", "trainer", "teacher_service")) \
        else "app"


def test_graph_is_complete() -> None:
    g = graph()
    assert {"robustkd.shared.spec", "robustkd.trainer.train", "robustkd.teacher_service.app", "robustkd.cli"} <= set(g)
    assert "robustkd.shared.spec" in g["robustkd.shared.layout"]


def test_shared_imports_nothing_of_ours() -> None:
    bad = {m: sorted(d for d in deps if layer(d) != "shared") for m, deps in graph().items() if layer(m) == "shared"}
    assert not {m: d for m, d in bad.items() if d}


def test_teacher_service_imports_only_the_contract() -> None:
    g = graph()
    bad = {m: sorted(d for d in deps if layer(d) not in ("shared", "teacher_service"))
           for m, deps in g.items() if layer(m) == "teacher_service"}
    assert not {m: d for m, d in bad.items() if d}


def test_trainer_imports_only_the_contract_except_the_online_teacher() -> None:
    g = graph()
    crossing = {m: sorted(d for d in deps if layer(d) not in ("shared", "trainer"))
                for m, deps in g.items() if layer(m) == "trainer"}
    crossing = {m: d for m, d in crossing.items() if d}
    assert set(crossing) <= {"robustkd.trainer.online"}
    assert all(layer(d) == "teacher_service" for d in crossing.get("robustkd.trainer.online", []))


def test_nothing_imports_the_cli() -> None:
    g = graph()
    assert [m for m, deps in g.items() if "robustkd.cli" in deps and m not in ENTRY_POINTS] == []


def test_evaluation_does_not_import_the_training_loop() -> None:
    assert "robustkd.trainer.train" not in reachable(graph(), "robustkd.trainer.evaluate")
    assert "robustkd.trainer.train" not in reachable(graph(), "robustkd.trainer.run")


def test_no_import_cycles() -> None:
    g = graph()
    cyclic = [m for m in g if m in reachable(g, m)]
    assert cyclic == []


@pytest.mark.parametrize("module", sorted(m for m in modules() if layer(m) != "app"))
def test_library_code_raises_instead_of_exiting(module: str) -> None:
    if module in ENTRY_POINTS:
        return
    text = modules()[module].read_text()
    assert "typer" not in text and "sys.exit" not in text and "SystemExit" not in text


def test_cli_imports_no_torch() -> None:
    """`robustkd --help` must not pay for torch."""
    code = "import sys, robustkd.cli; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_no_module_over_400_lines() -> None:
    long = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
