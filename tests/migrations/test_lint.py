"""Generated revisions pass the project's ruff and `mypy --strict` as they are."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.migrations.helpers import Chain, add_categories, products_schema, with_weight

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def revisions(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """One revision of every kind the planner writes."""
    chain = Chain()
    renames = {("products", "title"): "name"}
    checked = products_schema()
    checked.tables["products"].append_constraint(
        sa.CheckConstraint("char_length(currency) = 3", name="ck_products_currency")
    )
    for schema in [
        products_schema(),
        with_weight(),
        add_categories(with_weight()),
        add_categories(products_schema(name="title", name_length=100)),
        add_categories(products_schema(name="title", name_length=100, with_sku=False)),
        add_categories(sa.MetaData()),
        checked,
    ]:
        chain.advance(schema, renames=renames, allow_destructive=True)
    # long identifiers and a long CHECK expression exercise the line splitting
    table, old, new = "t" * 60, "c" * 60, "d" * 60
    values = ", ".join(f"'{word}'" for word in ["pending", "confirmed", "shipped", "delivered"] * 3)

    def long_schema(column: str) -> sa.MetaData:
        metadata = sa.MetaData()
        sa.Table(
            table,
            metadata,
            sa.Column("id", sa.Integer(), primary_key=True),
            sa.Column(column, sa.String(20), server_default="pending", nullable=False),
            sa.CheckConstraint(f"{column} IN ({values})", name="ck_long_status"),
            sa.Index("ix_long_status", column),
        )
        return metadata

    other = Chain()
    other.advance(long_schema(old))
    other.advance(long_schema(new), renames={(table, new): old})
    directory = tmp_path_factory.mktemp("versions")
    paths = []
    for filename, text in [*chain.files.items(), *other.files.items()]:
        path = directory / filename
        path.write_text(text)
        paths.append(path)
    return paths


def run(tool: str, *args: str | Path) -> None:
    executable = BIN / tool
    if not executable.exists():
        pytest.skip(f"{tool} is not installed in {BIN}")
    result = subprocess.run(
        [str(executable), *map(str, args)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_check(revisions: list[Path]) -> None:
    run("ruff", "check", "--no-cache", "--config", ROOT / "pyproject.toml", *revisions)


def test_ruff_format(revisions: list[Path]) -> None:
    run("ruff", "format", "--check", "--no-cache", "--config", ROOT / "pyproject.toml", *revisions)


def test_mypy_strict(revisions: list[Path], tmp_path: Path) -> None:
    run(
        "mypy",
        "--strict",
        "--config-file",
        ROOT / "pyproject.toml",
        "--cache-dir",
        tmp_path / "mypy",
        *revisions,
    )
