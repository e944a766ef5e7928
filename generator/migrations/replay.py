"""Read the existing revision files into a schema.

Each revision is executed (its ``upgrade()``) against a recording ``op`` that collects the
operation objects instead of running SQL; the chain of revisions (``down_revision`` order)
is then folded into a `SchemaState`.  Files that cannot be built on raise `RevisionError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import BatchOperations, Operations, ops
from cloudretail.generator.errors import CloudRetailError
from cloudretail.generator.migrations.state import SchemaState
from sqlalchemy.types import TypeEngine


class RevisionError(CloudRetailError, ValueError):
    """Existing revision files that cannot be built on (unloadable, branched, not a chain);
    ``problems`` pairs each file name with what is wrong with it."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems: list[tuple[str, str]] = list(problems)
        super().__init__("\n".join(f"{name}: {problem}" for name, problem in self.problems))


@dataclass
class _Revision:
    filename: str
    revision: str
    down_revision: str | None
    ops: list[ops.MigrateOperation]


class _RecordingOperations(Operations):
    """``op`` for replaying a revision: collects operation objects, runs nothing."""

    def __init__(self, migration_context: MigrationContext) -> None:
        super().__init__(migration_context)
        self.recorded: list[ops.MigrateOperation] = []

    def invoke(self, operation: ops.MigrateOperation) -> Any:
        self.recorded.append(operation)
        return None

    @contextmanager
    def batch_alter_table(
        self, table_name: str, schema: str | None = None, *args: Any, **kw: Any
    ) -> Iterator[BatchOperations]:
        yield _RecordingBatch(self, table_name, schema)


class _RecordingBatch(BatchOperations):
    """``batch_op`` for replaying a revision: the batch ops only need the table's name."""

    def __init__(self, parent: _RecordingOperations, table_name: str, schema: str | None):
        target = SimpleNamespace(table_name=table_name, schema=schema)
        super().__init__(parent.migration_context, impl=cast(Any, target))
        self._parent = parent

    def invoke(self, operation: ops.MigrateOperation) -> Any:
        self._parent.recorded.append(operation)
        return None


def _load_chain(existing: Mapping[str, str]) -> list[_Revision]:
    revisions: dict[str, _Revision] = {}
    for filename in sorted(existing):
        if not filename.endswith(".py") or filename.rsplit("/", 1)[-1] == "__init__.py":
            continue
        revision = _load_revision(filename, existing[filename])
        if revision.revision in revisions:
            raise RevisionError(
                [
                    (
                        filename,
                        f"revision {revision.revision!r} already defined in "
                        f"{revisions[revision.revision].filename}",
                    )
                ]
            )
        revisions[revision.revision] = revision
    if not revisions:
        return []

    children: dict[str | None, list[_Revision]] = {}
    for revision in revisions.values():
        if revision.down_revision is not None and revision.down_revision not in revisions:
            raise RevisionError(
                [(revision.filename, f"down_revision {revision.down_revision!r} is missing")]
            )
        children.setdefault(revision.down_revision, []).append(revision)
    chain: list[_Revision] = []
    parent: str | None = None
    while nxt := children.get(parent):
        if len(nxt) > 1:
            names = ", ".join(r.filename for r in nxt)
            parent_name = "the base" if parent is None else repr(parent)
            problem = (
                f"revisions branch (several revisions revise {parent_name}): {names}; "
                "keep one of them"
            )
            raise RevisionError([(r.filename, problem) for r in nxt])
        chain.append(nxt[0])
        parent = nxt[0].revision
    if len(chain) != len(revisions):
        linked = {revision.revision for revision in chain}
        raise RevisionError(
            [
                (r.filename, "not in the single chain of revisions that starts at a base revision")
                for r in revisions.values()
                if r.revision not in linked
            ]
        )
    return chain


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _load_revision(filename: str, text: str) -> _Revision:
    namespace: dict[str, Any] = {"__name__": "revision_file", "__file__": filename}
    try:
        exec(compile(text, filename, "exec"), namespace)
    except (Exception, SystemExit) as exc:
        raise RevisionError([(filename, f"cannot load revision: {_describe(exc)}")]) from exc
    revision = namespace.get("revision")
    down_revision = namespace.get("down_revision")
    upgrade = namespace.get("upgrade")
    if not isinstance(revision, str) or not callable(upgrade):
        raise RevisionError([(filename, "not an Alembic revision (revision/upgrade missing)")])
    if down_revision is not None and not isinstance(down_revision, str):
        raise RevisionError([(filename, "merge revisions are not supported")])
    recorder = _RecordingOperations(MigrationContext.configure(dialect_name="postgresql"))
    namespace["op"] = recorder
    try:
        upgrade()
    except (Exception, SystemExit) as exc:
        raise RevisionError([(filename, f"cannot replay upgrade(): {_describe(exc)}")]) from exc
    return _Revision(filename, revision, down_revision, recorder.recorded)


def replay(
    existing: Mapping[str, str], check: Callable[[SchemaState], str | None] | None = None
) -> tuple[list[_Revision], SchemaState]:
    """The chain of revisions in ``existing`` (file name -> text; ``__init__.py`` and
    non-``.py`` names are ignored), base first, and the schema its upgrades build.

    ``check`` tells what is wrong with the schema a revision leaves (None when nothing is):
    the first revision it finds a problem with is refused."""
    chain = _load_chain(existing)
    state = SchemaState()
    for loaded in chain:
        for op in loaded.ops:
            try:
                state.apply(op)
            except Exception as exc:  # whatever a hand-edited revision makes replay trip on
                problem = f"cannot replay upgrade(): {_describe(exc)}"
                raise RevisionError([(loaded.filename, problem)]) from exc
        if check is not None and (wrong := check(state)) is not None:
            problem = f"cannot build the schema its upgrade() leaves: {wrong}"
            raise RevisionError([(loaded.filename, problem)])
    return chain, state


def _types(op: ops.MigrateOperation) -> Iterator[TypeEngine[Any]]:
    if isinstance(op, ops.ModifyTableOps):
        for sub in op.ops:
            yield from _types(sub)
    elif isinstance(op, ops.CreateTableOp):
        yield from (c.type for c in op.columns if isinstance(c, sa.Column))
    elif isinstance(op, ops.AddColumnOp):
        yield op.column.type
    elif isinstance(op, ops.AlterColumnOp) and op.modify_type is not None:
        yield sa.types.to_instance(op.modify_type)


def unnameable_types(chain: Sequence[_Revision], name: str) -> RevisionError:
    """The revisions of ``chain`` whose types come from module ``name``, which the code of a
    new revision cannot name (every revision when none is found)."""
    problems = []
    for revision in chain:
        for type_ in (t for op in revision.ops for t in _types(op)):
            cls = type(type_)
            if cls.__module__.split(".")[0] == name:
                problems.append(
                    (
                        revision.filename,
                        f"a new revision cannot name the type {type_!r} it uses "
                        f"({cls.__module__}.{cls.__qualname__}); "
                        "use SQLAlchemy or dialect types only",
                    )
                )
    if not problems:
        problem = f"a new revision cannot name {name!r}; use SQLAlchemy or dialect types only"
        problems = [(revision.filename, problem) for revision in chain]
    return RevisionError(problems)
