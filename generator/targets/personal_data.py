"""A service's personal data as its generated `personal_data.py` describes it: the subject
tables with their columns' `pii`, and for the subjects' owner the services it gathers an
export from. runtime/personal_data.py does the erasing and exporting."""

from __future__ import annotations

from dataclasses import dataclass

from cloudretail.generator.model import Column, Service, Table, subject_data_path
from cloudretail.generator.pycode import Imports, call
from cloudretail.generator.render import pystr


@dataclass(frozen=True)
class PersonalDataCode:
    imports: str
    tables: tuple[str, ...]  # SubjectTable(...) expressions
    sources: tuple[str, ...]  # Source(...) expressions


def _value(column: Column) -> str | None:
    """What erasure writes into the column (or into each of its `pii_keys`); None: NULL."""
    if column.replacement is not None:
        return column.kind.literal(column.replacement)
    if column.pii == "anonymise":
        return column.kind.anonymous
    return None


def _pii(column: Column) -> str:
    args = [pystr(column.name), pystr(column.pii or "")]
    value = _value(column)
    if value is not None:
        args.append(value)
    if column.pii_keys:
        keys = ", ".join(pystr(key) for key in column.pii_keys)
        args.append(f"keys=({keys},)" if len(column.pii_keys) == 1 else f"keys=({keys})")
    return call("Pii(", args, indent=0)


def _table(table: Table, service: Service) -> str:
    args = [table.class_name, f"subject={pystr(table.subject or '')}"]
    if table.subject_through is not None:
        parent = service.table(table.subject_through)
        args.append(f"through=Through({parent.class_name}, {pystr(parent.subject or '')})")
    if table.erasure == "delete":
        args.append("delete=True")
    marked = [_pii(column) for column in table.columns if column.pii is not None]
    if marked:
        args.append("pii=(" + ", ".join(marked) + ("," if len(marked) == 1 else "") + ")")
    secret = [pystr(column.name) for column in table.columns if column.secret]
    if secret:
        args.append("secret=(" + ", ".join(secret) + ("," if len(secret) == 1 else "") + ")")
    return call("SubjectTable(", args, indent=0)


def personal_data_code(service: Service) -> PersonalDataCode:
    tables = service.subject_tables
    imports = Imports().add("cloudretail.runtime.personal_data", "PersonalData")
    if tables:
        imports.add("cloudretail.runtime.personal_data", "SubjectTable")
        imports.add(f"generated.services.{service.name}.models", *(t.class_name for t in tables))
    if any(table.subject_through for table in tables):
        imports.add("cloudretail.runtime.personal_data", "Through")
    columns = [column for table in tables for column in table.columns if column.pii is not None]
    if columns:
        imports.add("cloudretail.runtime.personal_data", "Pii")
    for column in columns:
        if _value(column) is not None and column.kind.python_import:
            imports.add(*column.kind.python_import)
    sources = service.personal_data.sources if service.personal_data else ()
    if sources:
        imports.add("cloudretail.runtime.personal_data", "Source")
    return PersonalDataCode(
        imports=imports.lines(),
        tables=tuple(_table(table, service) for table in tables),
        sources=tuple(
            call("Source(", [pystr(source), pystr(subject_data_path(source))], indent=0)
            for source in sources
        ),
    )
