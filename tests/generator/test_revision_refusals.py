"""Hand-edited revisions that `generate` cannot build on: a message naming the revision,
exit code 2, nothing written; never a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cloudretail.cli import app
from typer.testing import CliRunner, Result

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = ROOT / "tests" / "specs" / "minimal.yaml"
VERSIONS = Path("out/services/catalog/migrations/versions")
runner = CliRunner()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The minimal spec generated once into out/, run from its folder (relative paths)."""
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(MINIMAL, "spec.yaml")
    first = generate()
    assert first.exit_code == 0, first.output
    return tmp_path


def generate() -> Result:
    return runner.invoke(
        app, ["generate", "--spec", "spec.yaml", "--out", "out", "--handlers", "handlers"]
    )


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "spec.yaml"
    }


def assert_refused(result: Result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output
    assert result.exit_code == 2, result.output


def edit_revision(upgrade: str, prelude: str = "") -> Path:
    """The only revision, with `upgrade` appended to its upgrade() and `prelude` put before
    it (as someone editing the file by hand would)."""
    (revision,) = sorted(VERSIONS.glob("*.py"))
    text = revision.read_text()
    text = text.replace("\n\ndef upgrade() -> None:\n", f"{prelude}\n\ndef upgrade() -> None:\n")
    text = text.replace("\n\n\ndef downgrade", f"\n{upgrade}\n\n\ndef downgrade")
    revision.write_text(text)
    return revision


def edit_spec(old: str, new: str) -> None:
    text = Path("spec.yaml").read_text()
    assert old in text
    Path("spec.yaml").write_text(text.replace(old, new))


@pytest.mark.parametrize(
    ("upgrade", "problem"),
    [
        (
            '    op.create_index("ix_items_nope", "items", ["nope"])',
            "no column named 'nope'",
        ),
        (
            '    op.create_unique_constraint("uq_items_nope", "items", ["nope"])',
            "no column named 'nope'",
        ),
        ('    op.create_table("empty")', "syntax error"),
        (
            '    op.create_table("other", sa.Column("id", sa.Integer(), primary_key=True))\n'
            '    op.create_index("ix_dup", "other", ["id"])\n'
            '    op.create_index("ix_dup", "items", ["name"])',
            "index ix_dup already exists",
        ),
    ],
    ids=["index-unknown-column", "unique-unknown-column", "table-without-columns", "index-twice"],
)
def test_a_revision_leaving_a_schema_that_cannot_be_built_is_named(
    project: Path, upgrade: str, problem: str
):
    revision = edit_revision(upgrade)
    before = snapshot(project)
    result = generate()
    assert_refused(result)
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"{revision}: cannot build the schema its upgrade() leaves: "), first
    assert problem in first
    assert snapshot(project) == before


def test_a_type_a_revision_defines_is_named_when_a_new_revision_needs_it(project: Path):
    revision = edit_revision(
        '    op.add_column("items", sa.Column("amount", Money()))',
        prelude="\n\nclass Money(sa.TypeDecorator):\n    impl = sa.Numeric\n    cache_ok = True\n",
    )
    edit_spec(
        "          note: {type: text}\n",
        "          note: {type: text}\n          amount: {type: decimal, precision: 12, scale: 2}\n",
    )
    before = snapshot(project)
    result = generate()
    assert_refused(result)
    assert result.stderr.startswith(
        f"{revision}: a new revision cannot name the type Money() it uses "
        "(revision_file.Money); use SQLAlchemy or dialect types only"
    ), result.stderr
    assert snapshot(project) == before


def test_a_generated_column_can_be_renamed(project: Path):
    """A computed column's default is not a plain DEFAULT: the rename does not compare it."""
    edit_revision(
        '    op.add_column("items", sa.Column("total", sa.Integer(), sa.Computed("1 + 1")))'
    )
    edit_spec(
        "          note: {type: text}\n",
        "          note: {type: text}\n          sum: {type: integer, renamed_from: total}\n",
    )
    result = generate()
    assert result.exit_code == 0, result.output
    (_, added) = sorted(VERSIONS.glob("*.py"))
    assert "- rename column items.total to sum" in added.read_text()
