"""Each database's models and Alembic migrations: revisions that only ever grow.

Existing revisions are kept byte for byte; when the spec's tables differ from what they
build, the planner (Alembic's autogenerate) adds one new revision with the difference.
"""

from __future__ import annotations

from collections.abc import Mapping

from generator.errors import CloudRetailError
from generator.migrations import HEADER, DestructiveChangeError, plan_migration
from generator.model import Platform, Schema
from generator.render import OutputFile
from generator.sqlschema import schema_metadata
from generator.targets.services import models_code


class MigrationRefusedError(CloudRetailError):
    """The spec drops or narrows data and does not say that this is allowed."""


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


def files(platform: Platform, existing: Mapping[str, str]) -> list[OutputFile]:
    out: list[OutputFile] = []
    refused: list[str] = []
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
        try:
            revision = plan_migration(
                schema_metadata(schema.tables),
                revisions,
                service=schema.folder.rpartition("/")[2],
                renames=_renames(schema),
                allow_destructive=any(table.allow_destructive for table in schema.tables),
            )
        except DestructiveChangeError as error:
            refused += [f"{schema.database}: {message}" for message in error.messages]
            continue
        if revision is not None:
            body = revision.text.removeprefix(HEADER + "\n")
            out.append(OutputFile(f"{folder}/{revision.filename}", text=body))
    if refused:
        raise MigrationRefusedError(
            "the spec change would lose data:\n" + "\n".join(f"  {line}" for line in refused)
        )
    return out
