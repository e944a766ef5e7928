"""A data subject's personal data in one service: erased with the subject, exported on request.

A service's generated `personal_data.py` describes its subject tables (spec: a table's
`subject`, a column's `pii`) as one `PersonalData`; nothing here knows a table by name.

Erasure runs in the caller's transaction (the consumer's, for the erasure event). A table
with `erasure: delete` loses the subject's rows. Any other keeps them and writes each
`erase` or `anonymise` column's value: NULL, the `replacement`, or the kind's anonymous
value (the nil UUID); for a JSON column with `pii_keys`, only those keys of the stored
object. `keep` columns, unmarked ones and NULLs stay as they are. The subject column is
erased or anonymised too, so the rows are not found again: erasing twice changes nothing.
Tables whose subject comes through another table go first, while that table still names
the person.

The export reads every row of the subject in every subject table: every column but the
secret ones (password hashes, 2FA secrets), encrypted ones decrypted (it is the person's
own data), as JSON (decimals as strings, times in ISO 8601). The subjects' owner gathers
its own and every other holder's, over the internal route each holder answers; a holder
that does not answer makes it a 503, never an export with a part missing.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from cloudretail.runtime.config import MissingServiceUrlError
from cloudretail.runtime.errors import Problem
from cloudretail.runtime.events.consumer import EventContext, Handler
from cloudretail.runtime.http import ServiceCallError, ServiceClients
from cloudretail.runtime.jsonenc import dumps
from sqlalchemy.ext.asyncio import AsyncSession

Action = Literal["erase", "anonymise", "keep"]
Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class Pii:
    """A personal column and what erasure does to it."""

    column: str
    action: Action
    value: Any = None  # what `erase`/`anonymise` write (with `keys`: into each key)
    keys: tuple[str, ...] = ()  # only these keys of a JSON object

    def erased(self, current: Any) -> Any:
        if self.action == "keep" or current is None:
            return current
        if not self.keys:
            return self.value
        if not isinstance(current, dict):
            return current  # not an object: it has no such keys
        return {key: self.value if key in self.keys else item for key, item in current.items()}


@dataclass(frozen=True)
class Through:
    """Rows whose subject is that of another table's row: the model and its subject column."""

    model: type[Any]
    subject: str


@dataclass(frozen=True)
class SubjectTable:
    """A table holding rows about data subjects. `subject` names the column holding the
    subject's id, or with `through` the key of the other table's row."""

    model: type[Any]
    subject: str
    through: Through | None = None
    delete: bool = False  # erasure deletes the rows (else it applies `pii`)
    pii: tuple[Pii, ...] = ()
    secret: tuple[str, ...] = ()  # columns never exported

    @property
    def name(self) -> str:
        return str(self.model.__tablename__)

    def of(self, subject_id: uuid.UUID) -> sa.ColumnElement[bool]:
        """The condition selecting the subject's rows."""
        column = getattr(self.model, self.subject)
        if self.through is None:
            return column == subject_id  # type: ignore[no-any-return]
        parent = self.through.model
        (key,) = sa.inspect(parent).primary_key
        owned = sa.select(key).where(getattr(parent, self.through.subject) == subject_id)
        return column.in_(owned)  # type: ignore[no-any-return]

    def _rows(self, subject_id: uuid.UUID) -> sa.Select[Any]:
        key = sa.inspect(self.model).primary_key
        return sa.select(self.model).where(self.of(subject_id)).order_by(*key)

    async def erase(self, session: AsyncSession, subject_id: uuid.UUID) -> None:
        if self.delete:
            await session.execute(sa.delete(self.model).where(self.of(subject_id)))
            return
        changing = [pii for pii in self.pii if pii.action != "keep"]
        for row in (await session.scalars(self._rows(subject_id))).all():
            for pii in changing:
                setattr(row, pii.column, pii.erased(getattr(row, pii.column)))
        await session.flush()

    async def export(self, session: AsyncSession, subject_id: uuid.UUID) -> Rows:
        names = [
            attribute.key
            for attribute in sa.inspect(self.model).column_attrs
            if attribute.key not in self.secret
        ]
        rows = (await session.scalars(self._rows(subject_id))).all()
        # Through the JSON encoding of the platform: a Decimal keeps every digit.
        return [json.loads(dumps({name: getattr(row, name) for name in names})) for row in rows]


@dataclass(frozen=True)
class Source:
    """Another service holding subject rows, and its route answering them for a subject."""

    service: str
    path: str  # with `{subject_id}`


@dataclass(frozen=True)
class PersonalData:
    """One service's subject tables; for the subjects' owner, the other holders too."""

    service: str
    subject_key: str  # the erasure event's payload field naming the subject
    tables: tuple[SubjectTable, ...] = ()
    sources: tuple[Source, ...] = ()

    async def erase(self, session: AsyncSession, subject_id: uuid.UUID) -> None:
        """Erase the subject from every subject table, in the caller's transaction."""
        for table in sorted(self.tables, key=lambda table: table.through is None):
            await table.erase(session, subject_id)

    def erasure_handler(self, then: Handler | None = None) -> Handler:
        """The erasure event's handler: erase the subject it names, then run `then` (the
        service's own `on_<event>`, if it has one) in the same transaction."""

        async def erase_subject(ctx: EventContext) -> None:
            await self.erase(ctx.session, uuid.UUID(str(ctx.event.data[self.subject_key])))
            if then is not None:
                await then(ctx)

        return erase_subject

    async def export(self, session: AsyncSession, subject_id: uuid.UUID) -> dict[str, Rows]:
        """The subject's rows in this service, per table."""
        return {table.name: await table.export(session, subject_id) for table in self.tables}

    async def answer(self, session: AsyncSession, subject_id: uuid.UUID) -> dict[str, Any]:
        """What the internal route answers the owner's export with."""
        return {
            "service": self.service,
            "subject_id": str(subject_id),
            "tables": await self.export(session, subject_id),
        }

    async def gather(
        self, session: AsyncSession, subject_id: uuid.UUID, clients: ServiceClients
    ) -> dict[str, dict[str, Rows]]:
        """Everything the platform holds of the subject, per service and table: this
        service's rows and each source's. A 503 problem when a source does not answer."""
        found = {self.service: await self.export(session, subject_id)} if self.tables else {}
        # One after the other: a handful of services, and the first failure ends it.
        for source in self.sources:
            try:
                reply = await clients.call(
                    source.service, "GET", source.path.format(subject_id=subject_id)
                )
            except (ServiceCallError, MissingServiceUrlError) as error:
                raise Problem(
                    503,
                    title="Export incomplete",
                    detail=f"the {source.service} service holds personal data and cannot be "
                    "asked for it right now; try again shortly",
                    headers={"Retry-After": "5"},
                    service=source.service,
                ) from error
            found[source.service] = reply["tables"]
        return found
