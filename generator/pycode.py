"""Pieces of generated Python. Layout is ruff's business (generator/formatting.py sorts
imports, drops unused ones and formats every generated file), so these only say what."""

from __future__ import annotations

from dataclasses import dataclass, field

from cloudretail.generator.render import pystr


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

    def lines(self) -> str:
        """One line per module, in a fixed order; ruff sorts them into sections."""
        straight = [f"import {module}" for module in sorted(self.straight)]
        froms = [
            f"from {module} import {', '.join(sorted(names))}"
            for module, names in sorted(self.names.items())
        ]
        return "\n".join(straight + froms)


def call(
    head: str, args: list[str] | tuple[str, ...], *, indent: int, tail: str = ")", reserve: int = 0
) -> str:
    """`head(arg, ...)` at `indent`; ruff splits it when it is too long."""
    del reserve  # what follows the call is ruff's to fit
    return f"{' ' * indent}{head}{', '.join(args)}{tail}"


def pytuple(values: tuple[str, ...] | None) -> str:
    """A tuple of strings as ruff formats it (`("a",)`, `("a", "b")`), or `None`."""
    if values is None:
        return "None"
    items = ", ".join(pystr(value) for value in values)
    return f"({items},)" if len(values) == 1 else f"({items})"
