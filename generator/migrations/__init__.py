"""Plan the next Alembic revision of a service from its desired SQLAlchemy schema.

`plan_migration` is pure and deterministic: the same desired ``MetaData`` and the same
existing revision files always give the same new revision file, byte for byte, or ``None``
when the schema already matches the head revision.  It runs four steps, one module each:

1. `replay` executes the existing revisions against a recording ``op`` and folds the
   operations into an exact model of the schema (`state`); no database is needed.
2. `compare` runs Alembic's autogenerate between that model and the desired metadata.
3. `plan` orders the operations, turns ``renamed_from`` pairs into renames, names unnamed
   constraints and finds the changes that lose data, refused unless allowed.
4. `render` writes the revision file.
"""

from __future__ import annotations

from collections.abc import Mapping

import sqlalchemy as sa
from cloudretail.generator.migrations.compare import autogenerate, unbuildable
from cloudretail.generator.migrations.plan import (
    DestructiveChange,
    DestructiveChangeError,
    Plan,
    destructive_changes,
    reverse_op,
)
from cloudretail.generator.migrations.render import (
    HEADER,
    NewRevision,
    UnknownNameError,
    render_revision,
)
from cloudretail.generator.migrations.replay import RevisionError, replay, unnameable_types

__all__ = [
    "HEADER",
    "DestructiveChange",
    "DestructiveChangeError",
    "NewRevision",
    "RevisionError",
    "plan_migration",
]


def plan_migration(
    metadata: sa.MetaData,
    existing: Mapping[str, str],
    *,
    service: str,
    renames: Mapping[tuple[str, str], str] = {},
    allow_destructive: bool = False,
) -> NewRevision | None:
    """Return the revision that brings the head of ``existing`` to ``metadata``.

    ``existing`` maps file names to the text of the revisions already in ``versions/``
    (``__init__.py`` and non-``.py`` names are ignored).  ``renames`` maps
    ``(table, new_column)`` to the old column name.  Returns ``None`` when nothing changed;
    raises :class:`DestructiveChangeError` when the change drops a table or a column or
    narrows a type and ``allow_destructive`` is false, :class:`RevisionError` when the
    existing revisions cannot be built on.
    """
    for table in metadata.tables.values():
        if table.schema is not None:
            raise ValueError(f"table {table.fullname!r}: schema-qualified tables are not supported")

    chain, state = replay(existing)
    try:
        exact = state.to_metadata(sqlite_safe=False)
        diff = autogenerate(state, exact, metadata)
    except sa.exc.SQLAlchemyError:
        replay(existing, check=unbuildable)  # names the revision that left such a schema
        raise
    upgrade = Plan(diff, exact, metadata, renames).upgrade_ops()
    if not upgrade:
        return None
    problems = destructive_changes(upgrade)
    if problems and not allow_destructive:
        raise DestructiveChangeError(problems)
    try:
        return render_revision(
            service=service,
            upgrade=upgrade,
            downgrade=[reverse_op(op) for op in reversed(upgrade)],
            kept=set(state.tables) & set(metadata.tables),
            down_revision=chain[-1].revision if chain else None,
            number=len(chain) + 1,
        )
    except UnknownNameError as error:  # the desired schema uses SQLAlchemy types only
        raise unnameable_types(chain, error.name) from None
