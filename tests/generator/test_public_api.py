"""The generator and the runtime use only the public API of the packages they depend on:
no private (underscore) name imported from them, no private attribute read off them."""

from __future__ import annotations

import ast
from pathlib import Path

import sqlalchemy as sa
from cloudretail.generator.sqlschema import table_schema
from sqlalchemy.dialects import postgresql

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = {"cloudretail", "handlers", "generated", "__future__"}
PRIVATE_USES = ("._copy(", "._prefixes", "._type_affinity", "._type_bound", "_render_cmd_body")


def sources() -> list[Path]:
    return sorted(p for folder in ("generator", "runtime") for p in (ROOT / folder).rglob("*.py"))


def test_no_private_name_is_imported_from_a_third_party_package():
    found = []
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                root = node.module.split(".")[0]
                private = [a.name for a in node.names if a.name.startswith("_")]
                if root not in FIRST_PARTY and (private or "._" in f".{node.module}"):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] not in FIRST_PARTY and "._" in f".{alias.name}":
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


def test_no_private_attribute_of_sqlalchemy_or_alembic_is_used():
    found = [
        f"{path.relative_to(ROOT)}: {use}"
        for path in sources()
        for use in PRIVATE_USES
        if use in path.read_text()
    ]
    assert found == []


def test_the_tables_the_spec_describes_have_no_create_table_prefixes():
    """The migration planner does not carry CREATE TABLE prefixes (TEMPORARY ...) over:
    the tables the spec describes have none."""
    from cloudretail.generator import load_platform

    platform = load_platform(ROOT / "tests" / "specs" / "minimal.yaml")
    tables = [
        table_schema(table, sa.MetaData()) for schema in platform.schemas for table in schema.tables
    ]
    assert tables
    for table in tables:
        ddl = str(sa.schema.CreateTable(table).compile(dialect=postgresql.dialect()))
        assert ddl.strip().startswith(f"CREATE TABLE {table.name} ("), ddl
