"""The tree keeps its architecture: no import circles, built-in plugins reach the core only through
facerec.plugin, tests read their material only through tests/support, and no file cites a document
that a clone of the repository does not have."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
from pathlib import Path

from facerec import plugin
from facerec.contract import parts
from support import ROOT

PACKAGES = ("facerec", "facerec_plugins")
SHARED_PATH = re.compile(r"(^|[/\\])shared([/\\]|$)")


def modules(package: str) -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imported(tree: ast.AST, inside_functions: bool) -> list[str]:
    """The facerec modules a module imports: at its top level (not under TYPE_CHECKING), or anywhere."""
    nodes = ast.walk(tree) if inside_functions else _top_level(tree)
    names = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return [name for name in names if name.split(".")[0] in PACKAGES]


def _top_level(tree: ast.Module):
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, (ast.If, ast.Try)):
            yield from ast.walk(node)
        else:
            yield node


def test_no_import_circles():
    known = {**modules("facerec"), **modules("facerec_plugins")}
    graph = {
        name: {dep for dep in imported(ast.parse(path.read_text()), False) if dep in known and dep != name}
        for name, path in known.items()
    }
    circles, state, stack = [], {}, []

    def visit(name: str) -> None:
        state[name] = "open"
        stack.append(name)
        for dep in sorted(graph[name]):
            if state.get(dep) == "open":
                circles.append(" -> ".join([*stack[stack.index(dep) :], dep]))
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert circles == []


def test_built_in_plugins_reach_the_core_only_through_facerec_plugin():
    for name, path in modules("facerec_plugins").items():
        outside = [
            dep
            for dep in imported(ast.parse(path.read_text()), True)
            if dep.split(".")[0] == "facerec" and not dep.startswith("facerec.plugin")
        ]
        assert outside == [], f"{name} imports {outside}"


def test_the_plugin_door_exports_every_part_protocol():
    protocols = {
        name
        for name, value in vars(parts).items()
        if inspect.isclass(value)
        and value.__module__ == parts.__name__
        and getattr(value, "_is_protocol", False)
    }
    assert protocols and protocols <= set(plugin.__all__)
    assert all(hasattr(plugin, name) for name in plugin.__all__)


def test_no_test_names_shared_but_the_material_door():
    """A test that opens ../shared itself passes here and fails in a user's clone. The door's own tests
    (tests/downloads/test_material.py) build clones with and without a `shared` folder on purpose."""
    door = {ROOT / "tests" / "support", ROOT / "tests" / "downloads" / "test_material.py"}
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if path.parent in door or path in door:
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        literals = [
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
        ]
        named = [text for text in literals if SHARED_PATH.search(text)]
        assert named == [], f"{path.relative_to(ROOT)} names {named}; read it through support.SHARED"


def test_no_file_cites_a_document_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    citing = [
        name
        for name in tracked.stdout.split()
        if (ROOT / name).is_file()
        and name != "tests/contract/test_layout.py"
        and "DESIGN.md" in (ROOT / name).read_text(errors="replace")
    ]
    assert citing == []
