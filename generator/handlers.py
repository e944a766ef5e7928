"""Hand-written handlers: find the ones the spec names, write stubs for the missing ones.

`handlers/<service>.py` belongs to the user. The generator only ever adds to it: a new
file for a service that has none, or a stub appended for a handler the file lacks. It never
rewrites what is there.
"""

from __future__ import annotations

import ast
import contextlib
from dataclasses import dataclass
from pathlib import Path

from generator.model import Platform, Service

_HEADER = '''"""Hand-written logic of the {service} service: its routes and the events it consumes.

Each function handles one route or one consumed event of the spec; `cloudretail generate`
adds a stub here for one it cannot find and never changes what is already written.
"""

from __future__ import annotations

from typing import Any

from runtime.events.consumer import EventContext
from runtime.handlers import Context, not_implemented
'''

_NEEDED_IMPORTS = {
    "Any": "from typing import Any",
    "BaseModel": "from pydantic import BaseModel",
    "Context": "from runtime.handlers import Context",
    "EventContext": "from runtime.events.consumer import EventContext",
    "not_implemented": "from runtime.handlers import not_implemented",
}


@dataclass(frozen=True)
class Needed:
    """A function the spec expects in `handlers/<service>.py`, and where the spec says so."""

    name: str
    stub: str
    spec_path: tuple[str | int, ...]


@dataclass(frozen=True)
class HandlerChange:
    path: Path
    text: str
    created: bool
    handlers: tuple[str, ...]


def event_handler_name(event: str) -> str:
    """`order.created` -> `on_order_created`."""
    return "on_" + event.replace(".", "_")


def needed(service: Service) -> list[Needed]:
    found = []
    for route in sorted((r for r in service.routes if r.handler), key=lambda r: r.index):
        auth = route.auth if not route.roles else f"{route.auth}: {', '.join(route.roles)}"
        found.append(
            Needed(
                route.handler or "",
                f"\n\nasync def {route.handler}(ctx: Context) -> Any:\n"
                f'    """{route.method} {route.path} ({auth})."""\n'
                f'    raise not_implemented("{service.name}", "{route.handler}")\n',
                ("services", service.name, "routes", route.index, "handler"),
            )
        )
    for route in sorted((r for r in service.routes if r.body), key=lambda r: r.index):
        found.append(
            Needed(
                route.body or "",
                f"\n\nclass {route.body}(BaseModel):\n"
                f'    """Body of {route.method} {route.path}; declare its fields here."""\n',
                ("services", service.name, "routes", route.index, "body"),
            )
        )
    for index, event in enumerate(service.consumes):
        name = event_handler_name(event)
        found.append(
            Needed(
                name,
                f"\n\nasync def {name}(ctx: EventContext) -> None:\n"
                f'    """Apply `{event}` (consumed once per event id)."""\n'
                f'    raise not_implemented("{service.name}", "{name}")\n',
                ("services", service.name, "events", "consumes", index),
            )
        )
    return found


def defined_functions(source: str) -> set[str]:
    """Top-level function and class names of a module; empty when it does not parse."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    kinds = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
    return {node.name for node in tree.body if isinstance(node, kinds)}


def _imported_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom | ast.Import):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def _with_imports(source: str, needed: list[str]) -> str:
    tree = ast.parse(source)
    missing = [_NEEDED_IMPORTS[name] for name in needed if name not in _imported_names(tree)]
    if not missing:
        return source
    imports = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    lines = source.splitlines(keepends=True)
    at = imports[-1].end_lineno if imports and imports[-1].end_lineno else 0
    return "".join([*lines[:at], *(line + "\n" for line in missing), *lines[at:]])


def missing_handlers(platform: Platform, folder: Path) -> dict[str, list[Needed]]:
    """Functions the spec needs that `folder/<service>.py` does not define, by service."""
    missing: dict[str, list[Needed]] = {}
    for service in platform.services:
        wanted = needed(service)
        if not wanted:
            continue
        path = folder / f"{service.name}.py"
        source = path.read_text(encoding="utf-8") if path.exists() else ""
        present = defined_functions(source)
        absent = [item for item in wanted if item.name not in present]
        if absent:
            missing[service.name] = absent
    return missing


def plan_stubs(platform: Platform, folder: Path) -> list[HandlerChange]:
    changes = []
    for name, absent in missing_handlers(platform, folder).items():
        path = folder / f"{name}.py"
        stubs = "".join(item.stub for item in absent)
        needs = [name for name in _NEEDED_IMPORTS if f"{name}" in stubs]
        if path.exists():
            source = path.read_text(encoding="utf-8")
            # A file that does not parse is left as it is; the stubs still go at the end.
            with contextlib.suppress(SyntaxError):
                source = _with_imports(source, needs)
            text = source.rstrip("\n") + "\n" + stubs
        else:
            text = _with_imports(_HEADER.format(service=name), needs) + stubs
        handlers = tuple(item.name for item in absent)
        changes.append(HandlerChange(path, text, not path.exists(), handlers))
    return changes


def write_stubs(changes: list[HandlerChange]) -> None:
    for change in changes:
        change.path.parent.mkdir(parents=True, exist_ok=True)
        init = change.path.parent / "__init__.py"
        if not init.exists():
            init.write_text('"""Hand-written domain logic, one module per service."""\n')
        change.path.write_text(change.text, encoding="utf-8")
