"""Hand-written handlers: find the ones the spec names, write stubs for the missing ones.

`handlers/<service>.py` belongs to the user. The generator only ever adds to it: a new
file for a service that has none, or a stub appended for a handler the file lacks. It never
rewrites what is there.
"""

from __future__ import annotations

import ast
import functools
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cloudretail.generator.model import Platform, Service

_HEADER = '''"""Hand-written logic of the {service} service: its routes and the events it consumes.

Each function handles one route or one consumed event of the spec; `cloudretail generate`
adds a stub here for one it cannot find and never changes what is already written.
"""

from __future__ import annotations
'''

# What a stub may use, and where it comes from: (isort section, module). Sections in isort
# order: the standard library, third-party packages (CloudRetail's runtime is one), this
# project's own.
_IMPORTS: dict[str, tuple[int, str]] = {
    "Any": (0, "typing"),
    "BaseModel": (1, "pydantic"),
    "EventContext": (1, "cloudretail.runtime.events.consumer"),
    "Context": (1, "cloudretail.runtime.handlers"),
    "not_implemented": (1, "cloudretail.runtime.handlers"),
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
    personal = service.personal_data
    for index, event in enumerate(service.consumes):
        if personal is not None and personal.applies_erasure and event == personal.erasure_event:
            continue  # the spec's `pii` erase; an `on_<event>` of its own is optional
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


def project_handlers(spec_path: Path) -> Path:
    """The project's `handlers/` folder: beside the `spec/` folder that holds the spec (the
    layout `cloudretail init` makes), or else beside the spec itself."""
    folder = spec_path.parent
    if folder.absolute().name == "spec":
        folder = folder.parent if folder.name == "spec" else folder.absolute().parent
    return folder / "handlers"


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


def _used_names(stubs: str) -> set[str]:
    """The names of `_IMPORTS` the stubs refer to (not merely mention in a docstring)."""
    try:
        tree = ast.parse(stubs)
    except SyntaxError:
        return set(_IMPORTS)
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)} & set(_IMPORTS)


def _import_sections(names: set[str]) -> list[list[str]]:
    """`from ... import ...` lines for `names`, one per module, grouped and ordered as ruff's
    isort does (classes before functions within a line)."""
    modules: dict[tuple[int, str], list[str]] = {}
    for name in names:
        modules.setdefault(_IMPORTS[name], []).append(name)
    sections: dict[int, list[str]] = {}
    for (section, module), imported in sorted(modules.items()):
        listed = ", ".join(sorted(imported, key=lambda name: (name[:1].islower(), name)))
        sections.setdefault(section, []).append(f"from {module} import {listed}")
    return [sections[section] for section in sorted(sections)]


def _new_file(service: str, names: set[str]) -> str:
    blocks = ["\n".join(lines) + "\n" for lines in _import_sections(names)]
    return "\n".join([_HEADER.format(service=service), *blocks])


def _with_imports(source: str, names: set[str]) -> str:
    """`source` with an import line for each of `names` it does not import yet, after its
    last import (or its docstring); `_tidy` then sorts the import block."""
    tree = ast.parse(source)
    missing = {name for name in names if name not in _imported_names(tree)}
    if not missing:
        return source
    lines = source.splitlines(keepends=True)
    imports = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    if imports:
        at = imports[-1].end_lineno or 0
    else:
        docstring = ast.get_docstring(tree, clean=False) is not None
        at = (tree.body[0].end_lineno or 0) if docstring else 0
    if at and not lines[at - 1].endswith("\n"):
        lines[at - 1] += "\n"
    added = [line + "\n" for section in _import_sections(missing) for line in section]
    return "".join([*lines[:at], *added, *lines[at:]])


@functools.cache
def _ruff() -> str | None:
    """The ruff of this environment (a development dependency), or None without one."""
    try:
        from ruff import find_ruff_bin

        found: str = find_ruff_bin()
    except (ImportError, FileNotFoundError):
        return None
    return found


def _ruff_output(ruff: str, command: list[str], path: Path, text: str) -> str | None:
    """`text` after `ruff <command>` as if it were `path` (its config applies); None when
    ruff fails."""
    try:
        done = subprocess.run(
            [ruff, *command, "--no-cache", "--stdin-filename", str(path), "-"],
            input=text,
            capture_output=True,
            encoding="utf-8",
            check=False,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 and done.stdout else None


_SORT_IMPORTS = ["check", "--fix-only", "--select", "I"]
_SORT_AND_DROP_UNUSED = ["check", "--fix-only", "--select", "I,F401"]
_FORMAT = ["format"]


def _tidy(path: Path, text: str, original: str | None) -> str:
    """`text` (`original` with stubs added, or a new file when `original` is None) with its
    imports sorted and formatted by ruff, as `ruff check --fix` and `ruff format` would.

    Of an existing file, only what ruff already finds in order is kept in order: its imports
    are sorted only if they were sorted before, it is formatted only if it was formatted
    before, and no import of it is dropped (unused here, it may be re-exported). Without
    ruff, `text` as it is."""
    ruff = _ruff()
    if ruff is None:
        return text
    if original is None:
        steps = [_SORT_AND_DROP_UNUSED, _FORMAT]
    else:
        steps = [
            step
            for step in (_SORT_IMPORTS, _FORMAT)
            if _ruff_output(ruff, step, path, original) == original
        ]
    for step in steps:
        text = _ruff_output(ruff, step, path, text) or text
    return text


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
        uses = _used_names(stubs)
        if path.exists():
            original = path.read_text(encoding="utf-8")
            try:
                source = _with_imports(original, uses)
            except SyntaxError:
                # A file that does not parse is left as it is; the stubs still go at the end.
                text = original.rstrip("\n") + "\n" + stubs
            else:
                text = _tidy(path, source.rstrip("\n") + "\n" + stubs, original)
        else:
            text = _tidy(path, _new_file(name, uses) + stubs, None)
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
