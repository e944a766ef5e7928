"""Each database's models and Alembic migrations: revisions that only ever grow.

Existing revisions are kept byte for byte; when the spec's tables differ from what they
build, the planner (Alembic's autogenerate) adds one new revision with the difference.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cloudretail.generator import cache
from cloudretail.generator.errors import GeneratedFileError, Location, SpecError, SpecIssue
from cloudretail.generator.loader import Document, PathKey, dotted
from cloudretail.generator.model import Platform, Schema
from cloudretail.generator.render import OutputFile
from cloudretail.generator.targets.services import models_code

if TYPE_CHECKING:
    from cloudretail.generator.migrations import DestructiveChange, NewRevision


@dataclass(frozen=True)
class Refusal:
    """A change that loses data, and the place in the spec that makes it: the table for a
    dropped column, the column for a narrowed type, the service's tables for a dropped table."""

    spec_path: PathKey
    message: str


class MigrationRefusedError(SpecError):
    """The spec drops or narrows data and does not say that this is allowed.

    The target that finds it only has the model, so it points at the spec's first line;
    `located` places each refusal at its table or column in the spec document
    (FILE:LINE:COLUMN), as every other spec problem is (`generate` and `validate` do)."""

    def __init__(self, refusals: Sequence[Refusal], locate: Callable[[PathKey], Location]):
        self.refusals = list(refusals)
        super().__init__(
            [SpecIssue(locate(r.spec_path), dotted(r.spec_path), r.message) for r in self.refusals]
        )

    def located(self, document: Document) -> MigrationRefusedError:
        return MigrationRefusedError(self.refusals, lambda path: key_location(document, path))


def key_location(document: Document, path: PathKey) -> Location:
    """Where the deepest key of `path` that the document has stands."""
    for end in range(len(path), 0, -1):
        location = document.keys.get(path[:end])
        if location is not None:
            return location
    return document.locate(())


def versions_folder(schema: Schema) -> str:
    return f"{schema.folder}/migrations/versions"


def existing_revisions(schema: Schema, existing: Mapping[str, str]) -> dict[str, str]:
    prefix = versions_folder(schema) + "/"
    return {
        path.removeprefix(prefix): text
        for path, text in existing.items()
        if path.startswith(prefix) and path.endswith(".py") and "/" not in path.removeprefix(prefix)
    }


def _renames(schema: Schema) -> dict[tuple[str, str], str]:
    return {
        (table.name, column.name): column.renamed_from
        for table in schema.tables
        for column in table.columns
        if column.renamed_from
    }


def _spec_path(platform: Platform, schema: Schema) -> PathKey:
    """Where the spec describes the schema's tables: its service, or the event bus."""
    for service in platform.services:
        if schema.folder == f"services/{service.name}":
            return ("services", service.name)
    return ("event_bus",)


def _refusal(owner: PathKey, change: DestructiveChange) -> Refusal:
    tables = (*owner, "tables")
    if change.kind == "drop_table":
        # the dropped table is no longer in the spec to say so: one that stays does
        hint = "mark a table of the same database that stays allow_destructive: true"
        return Refusal(tables, f"dropping table {change.table!r} loses data; {hint}")
    if change.kind == "drop_column":
        return Refusal((*tables, change.table), change.problem)
    return Refusal((*tables, change.table, "columns", str(change.column)), change.problem)


def _allowed(change: DestructiveChange, schema: Schema) -> bool:
    """A table allows the changes that lose its own data; a dropped table is no longer in the
    spec to say so, so any table of the same database that allows them allows it."""
    if change.kind == "drop_table":
        return any(table.allow_destructive for table in schema.tables)
    return any(table.allow_destructive for table in schema.tables if table.name == change.table)


def _plan(
    schema: Schema, revisions: Mapping[str, str], *, allow_destructive: bool
) -> NewRevision | None:
    # SQLAlchemy and Alembic load here, when a plan is not already known to be empty
    from cloudretail.generator.migrations import plan_migration
    from cloudretail.generator.sqlschema import schema_metadata

    return plan_migration(
        schema_metadata(schema.tables),
        revisions,
        service=schema.folder.rpartition("/")[2],
        renames=_renames(schema),
        allow_destructive=allow_destructive,
    )


def unchanged_entry(schema: Schema, revisions: Mapping[str, str]) -> str:
    """The cache entry that says the schema's tables match the head of `revisions`: planning
    again would add nothing (the model's repr holds every table, column and option)."""
    history = (f"{name}\n{text}" for name, text in sorted(revisions.items()))
    return cache.key(repr(schema), *history)


def _abandoned_histories(platform: Platform, existing: Mapping[str, str]) -> list[Refusal]:
    """Revisions of a database the spec no longer has tables for (its service is gone or has
    no tables left): generating would delete them, and the history of the database with them.
    The spec cannot allow that (no table is left to say so); deleting the folder does."""
    kept = {versions_folder(schema) for schema in platform.schemas}
    folders = sorted(
        {
            path.rpartition("/")[0]
            for path in existing
            if path.endswith(".py") and path.rpartition("/")[0].endswith("/migrations/versions")
        }
        - kept
    )
    services = {service.name for service in platform.services}
    refusals = []
    for folder in folders:
        owner = folder.removesuffix("/migrations/versions")
        kind, _, name = owner.partition("/")
        if kind != "services" or "/" in name:
            continue
        path: PathKey = ("services", name, "tables") if name in services else ("services", name)
        refusals.append(
            Refusal(
                path,
                "dropping every table loses data and `generate` would delete their revisions "
                f"({folder} in the output folder); if the data may go, delete that folder first",
            )
        )
    return refusals


def files(platform: Platform, existing: Mapping[str, str]) -> list[OutputFile]:
    out: list[OutputFile] = []
    refused: list[Refusal] = []
    broken: list[tuple[str, str]] = []
    for schema in platform.schemas:
        context = {"platform": platform, "schema": schema, "models": models_code(schema.tables)}
        base = schema.folder
        out.append(OutputFile(f"{base}/models.py", "services/models.py.j2", context))
        out.append(OutputFile(f"{base}/alembic.ini", "services/alembic.ini.j2", context))
        out.append(
            OutputFile(f"{base}/migrations/env.py", "services/migrations/env.py.j2", context)
        )
        revisions = existing_revisions(schema, existing)
        folder = versions_folder(schema)
        out += [
            OutputFile(f"{folder}/{name}", text=text, verbatim=True)
            for name, text in sorted(revisions.items())
        ]
        unchanged = unchanged_entry(schema, revisions)
        if cache.has("migrations", unchanged):
            continue
        from cloudretail.generator.migrations import HEADER, DestructiveChangeError, RevisionError

        try:
            revision = _plan(schema, revisions, allow_destructive=False)
        except RevisionError as error:
            broken += [(f"{folder}/{name}", problem) for name, problem in error.problems]
            continue
        except DestructiveChangeError as error:
            refusals = [change for change in error.changes if not _allowed(change, schema)]
            if refusals:
                owner = _spec_path(platform, schema)
                refused += [_refusal(owner, change) for change in refusals]
                continue
            # every change is allowed by its table (the history loaded the first time)
            revision = _plan(schema, revisions, allow_destructive=True)
        if revision is None:
            cache.record("migrations", unchanged)
        else:
            body = revision.text.removeprefix(HEADER + "\n")
            out.append(OutputFile(f"{folder}/{revision.filename}", text=body))
    refused += _abandoned_histories(platform, existing)
    if broken:
        raise GeneratedFileError(broken)
    if refused:
        raise MigrationRefusedError(refused, lambda _path: Location(platform.source, 1, 1))
    return out
