"""Pieces of generated Python: import blocks sorted as ruff expects, calls that fit 100 columns."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from generator.render import pystr

FIRST_PARTY = frozenset({"generated", "handlers", "runtime"})


def _section(module: str) -> int:
    top = module.split(".")[0]
    if top == "__future__":
        return 0
    if top in sys.stdlib_module_names:
        return 1
    if top in FIRST_PARTY:
        return 3
    return 2


def _name_key(name: str) -> tuple[int, str]:
    # isort's order-by-type: CONSTANTS, then Classes, then functions and modules.
    bare = name.split(" as ")[0]
    if bare.isupper() and len(bare) > 1:
        return (0, bare)
    if bare[:1].isupper():
        return (1, bare)
    return (2, bare)


@dataclass
class Imports:
    straight: set[str] = field(default_factory=set)
    names: dict[str, set[str]] = field(default_factory=dict)

    def add(self, module: str, *names: str) -> Imports:
        if names:
            self.names.setdefault(module, set()).update(names)
        else:
            self.straight.add(module)
        return self

    def lines(self, width: int = 100) -> str:
        """The import block: sections separated by one blank line."""
        sections: dict[int, list[str]] = {}
        for module in sorted(self.straight, key=lambda m: m.split(" as ")[0].lower()):
            sections.setdefault(_section(module), []).append(f"import {module}")
        for module in sorted(self.names, key=str.lower):
            names = sorted(self.names[module], key=_name_key)
            line = f"from {module} import {', '.join(names)}"
            if len(line) > width:
                inner = "".join(f"    {name},\n" for name in names)
                line = f"from {module} import (\n{inner})"
            sections.setdefault(_section(module), []).append(line)
        blocks = []
        for key in sorted(sections):
            straight = [line for line in sections[key] if line.startswith("import ")]
            froms = [line for line in sections[key] if line.startswith("from ")]
            blocks.append("\n".join(straight + froms))
        return "\n\n".join(blocks)


def call(
    head: str, args: list[str] | tuple[str, ...], *, indent: int, tail: str = ")", reserve: int = 0
) -> str:
    """`head(arg, ...)` on one line when it fits in 100 columns (less `reserve` for what
    follows it, e.g. a comma), else one argument per line with a trailing comma (which
    ruff's formatter keeps exploded, so output is stable)."""
    pad = " " * indent
    one_line = f"{pad}{head}{', '.join(args)}{tail}"
    if len(one_line) + reserve <= 100:
        return one_line
    inner = "".join(f"{pad}    {arg},\n" for arg in args)
    return f"{pad}{head}\n{inner}{pad}{tail}"


def pytuple(values: tuple[str, ...] | None) -> str:
    """A tuple of strings as ruff formats it (`("a",)`, `("a", "b")`), or `None`."""
    if values is None:
        return "None"
    items = ", ".join(pystr(value) for value in values)
    return f"({items},)" if len(values) == 1 else f"({items})"
