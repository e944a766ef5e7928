"""Which events a generated CRUD write publishes, and where each payload field comes from.

Conventions (by event name, for a table whose rows are called `<row>`):
- `<row>.created` after `create`; `<row>.updated` after `replace`/`update` when something
  changed; `<row>.deleted` after `delete`;
- `<row>.<column>_changed` after `replace`/`update` when that column's value changed.
Payload fields: `<row>_id` is the primary key, a column's name is its value, `fields` (on
`updated`) the changed columns' new values, `old_<column>` / `new_<column>` (on `_changed`)
the value before and after.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_OPERATION_EVENTS = {
    "create": "created",
    "replace": "updated",
    "update": "updated",
    "delete": "deleted",
}


@dataclass(frozen=True)
class FieldSource:
    field: str
    kind: str  # "key" | "column" | "changes" | "old" | "new"
    column: str = ""


@dataclass(frozen=True)
class CrudEvent:
    event: str
    trigger: str  # "always" | "changed" | "column:<name>"
    sources: tuple[FieldSource, ...]
    missing: tuple[str, ...]  # payload fields nothing provides (a spec error)


def crud_events(
    row: str,
    key: str,
    columns: Iterable[str],
    operation: str,
    published: Mapping[str, Iterable[str]],
) -> list[CrudEvent]:
    """The events `operation` on a table publishes, given the service's published events
    (name -> payload field names)."""
    columns = set(columns)
    found: list[CrudEvent] = []
    verb = _OPERATION_EVENTS.get(operation)
    if verb is None:
        return found
    main = f"{row}.{verb}"
    if main in published:
        sources, missing = [], []
        for field in published[main]:
            if field == f"{row}_id":
                sources.append(FieldSource(field, "key", key))
            elif field in columns:
                sources.append(FieldSource(field, "column", field))
            elif field == "fields" and verb == "updated":
                sources.append(FieldSource(field, "changes"))
            else:
                missing.append(field)
        trigger = "changed" if verb == "updated" else "always"
        found.append(CrudEvent(main, trigger, tuple(sources), tuple(missing)))
    if verb != "updated":
        return found
    for event, fields in sorted(published.items()):
        prefix, _, name = event.partition(".")
        column = name.removesuffix("_changed")
        if prefix != row or not name.endswith("_changed") or column not in columns:
            continue
        sources, missing = [], []
        for field in fields:
            if field == f"{row}_id":
                sources.append(FieldSource(field, "key", key))
            elif field == f"old_{column}":
                sources.append(FieldSource(field, "old", column))
            elif field == f"new_{column}":
                sources.append(FieldSource(field, "new", column))
            elif field in columns:
                sources.append(FieldSource(field, "column", field))
            else:
                missing.append(field)
        found.append(CrudEvent(event, f"column:{column}", tuple(sources), tuple(missing)))
    return found
