"""Turn pydantic's complaints about a spec document into located, actionable issues."""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable
from typing import Any

from cloudretail.generator.errors import SpecError, SpecIssue
from cloudretail.generator.loader import Document, PathKey, dotted
from cloudretail.generator.spec import Spec
from pydantic import BaseModel, ValidationError


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The known name closest to `name`, when one is close enough to be a typo of it."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return close[0] if close else None


def suggest(name: str, candidates: Iterable[str]) -> str:
    """` (did you mean 'x'?)` when a known name is close to `name`, else empty."""
    close = closest(name, candidates)
    return f" (did you mean '{close}'?)" if close else ""


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated/Optional layers down to the type that holds fields or items."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            models = [arg for arg in args if isinstance(arg, type) and issubclass(arg, BaseModel)]
            annotation = models[0] if models else args[0]
        else:
            return annotation


def _model_at(path: PathKey) -> type[BaseModel] | None:
    """The spec model class that validates the mapping found at `path`."""
    current: Any = Spec
    for part in path:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        elif typing.get_origin(current) in (dict, list):
            current = typing.get_args(current)[-1]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def names_a_field(path: PathKey) -> bool:
    """Whether the last key of `path` is a field of a spec model (`nullable`, `routes`),
    rather than a name the spec's author chose (a service's, a column's)."""
    return bool(path) and _model_at(path[:-1]) is not None


def _data_path(document: Document, loc: tuple[int | str, ...]) -> PathKey:
    """Keep the parts of a pydantic `loc` that walk the data (drop union/validator tags)."""
    path: list[str | int] = []
    node: Any = document.data
    for part in loc:
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if in_dict or in_list:
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and not path_is_tag(part):
            # A missing field: still name it in the dotted location.
            path.append(part)
            node = None
            continue
        else:
            continue
        path.append(part)
    return tuple(path)


def path_is_tag(part: str) -> bool:
    """Pydantic inserts type tags such as `function-before[...]` or `str` into union locs."""
    return "[" in part or part in {"str", "int", "bool", "float", "list", "dict", "none"}


def _message(error: Any, path: PathKey) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        model = _model_at(path[:-1])
        known = list(model.model_fields) if model else []
        listing = f"; expected one of: {', '.join(known)}" if known and len(known) <= 12 else ""
        hint = suggest(str(path[-1]), known)
        return f"unknown key '{path[-1]}'{hint or listing}"
    if kind == "missing":
        return "required key is missing"
    if kind == "string_pattern_mismatch":
        value = error.get("input")
        names = error["ctx"].get("names") or []
        base = str(value).removesuffix(" | null")  # a payload type's optional marker
        close = difflib.get_close_matches(base, names, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}{str(value)[len(base) :]}'?)" if close else ""
        return f"'{value}' is not valid here (must match {error['ctx']['pattern']}){hint}"
    given = error.get("input")
    if kind in ("literal_error", "enum") and isinstance(given, str):
        # A Literal (a route's method) or a registry's name (a column's type): the names
        # come quoted in `expected`, as pydantic lists them.
        names = re.findall(r"'([^']*)'", str(error.get("ctx", {}).get("expected", "")))
        hint = suggest(given, names)
        if hint:
            return f"'{given}' is not one of {', '.join(names)}{hint}"
    if isinstance(given, str | int | float | bool):
        return f"{error['msg']} (got {given!r})"
    if isinstance(given, list | dict):
        return f"{error['msg']} (got a {'list' if isinstance(given, list) else 'mapping'})"
    return str(error["msg"])


def parse_spec(document: Document) -> Spec:
    """Validate the document against the spec models; every problem at once, each located."""
    try:
        return Spec.model_validate(document.data)
    except ValidationError as exc:
        issues = []
        for error in exc.errors():
            path = _data_path(document, tuple(error["loc"]))
            on_key = error["type"] == "extra_forbidden"
            if error["type"] == "missing":
                location = document.locate(path[:-1])
            else:
                location = document.locate(path, key=on_key)
            issues.append(SpecIssue(location, dotted(path), _message(error, path)))
        unique = {(issue.location, issue.where, issue.message): issue for issue in issues}
        raise SpecError(list(unique.values())) from None
