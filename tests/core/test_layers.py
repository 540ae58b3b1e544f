"""The layer rule of ``miniagents/__init__.py`` holds for every import in the package.

Every import statement of every module is read with ``ast`` — at module level, inside functions and under
``if TYPE_CHECKING:`` alike — and:

* every module belongs to exactly one layer of the table;
* no module imports a module of a higher layer;
* no chain of imports leads back to where it started (no cycle, not even inside a layer or a plug-in);
* ``docs/architecture.md`` shows the same table as ``miniagents/__init__.py``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import miniagents

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "miniagents"


def _table(text: str) -> list[tuple[int, list[str]]]:
    """The ``layer  what  modules`` rows of a layer table, as ``(layer, modules)``."""
    rows = []
    for line in text.splitlines():
        match = re.match(r"\s*(\d+)\s{2,}.+?\s{2,}(\S.*)$", line)
        if match:
            rows.append((int(match[1]), match[2].split()))
    return rows


def _init_table() -> list[tuple[int, list[str]]]:
    assert miniagents.__doc__ is not None
    return _table(miniagents.__doc__.split("The layer rule.", 1)[1])


def _docs_table() -> list[tuple[int, list[str]]]:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = text.split("<!-- layers:", 1)[1].split("```text", 1)[1].split("```", 1)[0]
    return _table(block)


def _module_names() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _module_names()


def _full_name(entry: str) -> str:
    return f"miniagents.{entry}" if entry.startswith("_") else entry


def _layer_of(module: str, layers: dict[str, int]) -> int | None:
    """The layer of *module*: its own entry, else its closest package's (a package stands for its modules)."""
    name = module
    while name:
        if name in layers:
            return layers[name]
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """``(imported module, line)`` for every import of the package in *path*, wherever it is written."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            # "from miniagents.llms import _tools" imports a module; "from miniagents import X" the namespace
            targets = [source, *(f"{source}.{alias.name}" for alias in node.names)]
        for target in targets:
            if not target.startswith("miniagents"):
                continue
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != module:
                yield target, node.lineno


def _graph() -> dict[str, set[str]]:
    return {module: {target for target, _ in _imports(module, path)} for module, path in MODULES.items()}


def test_the_docs_show_the_layer_table_of_the_package() -> None:
    assert _init_table(), "no layer table found in miniagents/__init__.py"
    assert _docs_table() == _init_table()


def test_every_module_is_in_exactly_one_layer() -> None:
    entries = [_full_name(entry) for _, row in _init_table() for entry in row]
    assert len(entries) == len(set(entries)), "a module is listed twice"
    layers = {_full_name(entry): layer for layer, row in _init_table() for entry in row}
    unplaced = sorted(module for module in MODULES if _layer_of(module, layers) is None)
    assert unplaced == []
    unknown = sorted(entry for entry in layers if entry not in MODULES)
    assert unknown == []


def test_no_module_imports_a_higher_layer() -> None:
    layers = {_full_name(entry): layer for layer, row in _init_table() for entry in row}
    violations = []
    for module, path in sorted(MODULES.items()):
        own = _layer_of(module, layers)
        assert own is not None
        for target, line in _imports(module, path):
            theirs = _layer_of(target, layers)
            assert theirs is not None
            if theirs > own:
                violations.append(
                    f"{path.relative_to(ROOT)}:{line}: {module} (layer {own}) imports {target} (layer {theirs})"
                )
    assert violations == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ],
)
def test_the_cycle_finder_finds_cycles(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert _cycles(graph) == expected


def test_the_import_reader_sees_function_level_and_type_checking_imports(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from miniagents._context import MiniAgents\n"
        "def f():\n    from miniagents._agents import AgentCall\n",
        encoding="utf-8",
    )
    seen = {target for target, _ in _imports("miniagents._probe", source)}
    assert {"miniagents._context", "miniagents._agents"} <= seen
