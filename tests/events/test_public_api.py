"""runtime/ uses other packages (aiokafka above all) through their public API only.

A library's private names (`consumer._client`, `from aiokafka.x import _y`) change without
notice between releases. The check reads the source with `ast`:

- importing a private name, or from a private module, of anything outside this project fails;
- an attribute starting with one underscore fails on a name imported from outside the project,
  and on any other object unless it is `self`/`cls`, something imported from this project, or
  the module itself defines that private name (a method, a class, `self._x = ...`), as the
  in-memory bus does when `MemoryProducer` calls `self.bus._append`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ROOT / "runtime"
PROJECT = frozenset(
    path.stem
    for path in ROOT.iterdir()
    if (path.is_dir() and (path / "__init__.py").is_file()) or path.suffix == ".py"
)
ATTRIBUTE_BUILTINS = frozenset({"getattr", "setattr", "hasattr", "delattr"})


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _is_project(module: str | None, level: int) -> bool:
    return level > 0 or (module is not None and module.split(".")[0] in PROJECT)


@dataclass(frozen=True)
class Finding:
    line: int
    text: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.text}"


def _defined_private_names(tree: ast.Module) -> set[str]:
    """Private names this module defines: functions, classes, `self._x =`, class attributes."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    targets = item.targets if isinstance(item, ast.Assign) else []
                    if isinstance(item, ast.AnnAssign):
                        targets = [item.target]
                    names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id in {"self", "cls"}
        ):
            names.add(node.attr)
    return {name for name in names if _is_private(name)}


def find_private_uses(source: str) -> list[Finding]:
    """Uses of other packages' private names in one module's source."""
    tree = ast.parse(source)
    findings: list[Finding] = []
    external: set[str] = set()  # names bound to something imported from outside the project
    project: set[str] = set()  # names bound to something imported from this project
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound = alias.asname or alias.name.split(".")[0]
                if _is_project(alias.name, 0):
                    project.add(bound)
                    continue
                external.add(bound)
                if any(_is_private(part) for part in alias.name.split(".")):
                    findings.append(Finding(node.lineno, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            bound_names = {alias.asname or alias.name for alias in node.names}
            if _is_project(node.module, node.level):
                project.update(bound_names)
                continue
            external.update(bound_names)
            if any(_is_private(part) for part in module.split(".")):
                findings.append(Finding(node.lineno, f"from {module} import ..."))
            for alias in node.names:
                if _is_private(alias.name):
                    findings.append(Finding(node.lineno, f"from {module} import {alias.name}"))

    own = _defined_private_names(tree)

    def check(node: ast.expr, attr: str, line: int) -> None:
        if not _is_private(attr):
            return
        if isinstance(node, ast.Name):
            if node.id in external:
                findings.append(Finding(line, f"{node.id}.{attr}"))
                return
            if node.id in {"self", "cls"} or node.id in project:
                return
        if attr not in own:
            findings.append(Finding(line, f"{ast.unparse(node)}.{attr}"))

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            check(node.value, node.attr, node.lineno)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ATTRIBUTE_BUILTINS
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            check(node.args[0], node.args[1].value, node.lineno)
    return sorted(findings, key=lambda finding: finding.line)


def _runtime_modules() -> list[Path]:
    return sorted(RUNTIME.rglob("*.py"))


def test_the_runtime_has_modules_to_check() -> None:
    names = {path.relative_to(RUNTIME).as_posix() for path in _runtime_modules()}
    assert {"events/kafka.py", "events/memory.py", "events/transport.py"} <= names


@pytest.mark.parametrize(
    "path", _runtime_modules(), ids=lambda path: path.relative_to(ROOT).as_posix()
)
def test_runtime_uses_no_private_names_of_other_packages(path: Path) -> None:
    findings = find_private_uses(path.read_text(encoding="utf-8"))
    assert not findings, f"{path.relative_to(ROOT)}: " + "; ".join(map(str, findings))


@pytest.mark.parametrize(
    "source",
    [
        "from aiokafka.util import _private\n",
        "from aiokafka._internal import thing\n",
        "import aiokafka._internal\n",
        "import aiokafka\naiokafka._private\n",
        "from aiokafka import AIOKafkaConsumer\nAIOKafkaConsumer._coordinator\n",
        "class Source:\n    def f(self):\n        return self._consumer._client\n",
        "def f(consumer):\n    return consumer._fetcher\n",
        "def f(consumer):\n    return consumer._subscription.assignment\n",
        "def f(consumer):\n    return getattr(consumer, '_coordinator')\n",
    ],
)
def test_the_check_flags_private_names_of_other_packages(source: str) -> None:
    assert find_private_uses(source)


@pytest.mark.parametrize(
    "source",
    [
        # The module's own helpers, on self and on the objects it defines.
        "class Bus:\n    def _append(self): ...\n"
        "class Producer:\n    def send(self):\n        self.bus._append()\n",
        "class Source:\n    def __init__(self):\n        self._consumer = None\n"
        "    def f(self, other):\n        return other._consumer\n",
        "def _helper(): ...\n_helper()\n",
        # This project's modules and names, dunders, public attributes of other packages.
        "from cloudretail.runtime.events import memory\nmemory._private\n",
        "import cloudretail.runtime.events.memory\ncloudretail._private\n",
        "from .memory import MemoryBus\nMemoryBus._private\n",
        "from __future__ import annotations\nerror.__cause__ = None\n",
        "from aiokafka import AIOKafkaConsumer\nAIOKafkaConsumer.assignment\n",
    ],
)
def test_the_check_leaves_the_projects_own_private_names_alone(source: str) -> None:
    assert find_private_uses(source) == []
