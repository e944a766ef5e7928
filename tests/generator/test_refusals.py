"""What `validate` and `generate` say when the spec or the existing revisions cannot be used:
a located message, exit code 2, nothing written. Regression tests for what the spec fuzzer
(test_spec_fuzz.py) and the review found."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from cloudretail.cli import app
from cloudretail.generator.writer import MANIFEST
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


def generate(*extra: str) -> Result:
    return runner.invoke(
        app, ["generate", "--spec", "spec.yaml", "--out", "out", "--handlers", "handlers", *extra]
    )


def validate() -> Result:
    return runner.invoke(app, ["validate", "spec.yaml", "--out", "out", "--handlers", "handlers"])


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "spec.yaml"
    }


def line_of(text: str, line: str) -> int:
    return text.splitlines().index(line) + 1


def only_revision() -> Path:
    (revision,) = sorted(VERSIONS.glob("*.py"))
    return revision


def branch_history() -> tuple[Path, Path]:
    """A copy of the first revision with its own id: two revisions revise the same parent,
    as after merging two branches that each added a revision."""
    original = only_revision()
    text = original.read_text()
    copied = VERSIONS / "0001_c0ffee000000_copied.py"
    copied.write_text(
        re.sub(r'^revision: str = "\w+"', 'revision: str = "c0ffee000000"', text, flags=re.M)
    )
    with Path("out", MANIFEST).open("a") as manifest:
        manifest.write(copied.relative_to("out").as_posix() + "\n")
    return original, copied


def assert_refused(result: Result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    assert result.exit_code == 2, result.output


# ----------------------------------------------------------------------------- branched history


def test_a_branched_history_is_a_clear_error_naming_the_revisions(project: Path):
    original, copied = branch_history()
    before = snapshot(project)
    result = generate()
    assert_refused(result)
    assert str(original) in result.stderr and str(copied) in result.stderr
    assert "branch" in result.stderr
    assert snapshot(project) == before


def test_a_branched_history_is_reported_by_validate(project: Path):
    _, copied = branch_history()
    result = validate()
    assert_refused(result)
    assert str(copied) in result.stderr


def test_a_garbage_revision_is_a_clear_error_naming_it(project: Path):
    revision = only_revision()
    revision.write_text("def upgrade(:\n")
    before = snapshot(project)
    result = generate()
    assert_refused(result)
    assert f"{revision}: cannot load revision" in result.stderr
    assert snapshot(project) == before


def test_a_revision_generate_did_not_write_is_refused(project: Path):
    """Alembic runs every file in versions/: a copy the manifest does not list is history too
    (here a second base), which the next revision would not build on."""
    original = only_revision()
    copied = VERSIONS / "0001_c0ffee000000_copied.py"
    copied.write_text(
        re.sub(
            r'^revision: str = "\w+"',
            'revision: str = "c0ffee000000"',
            original.read_text(),
            flags=re.M,
        )
    )
    before = snapshot(project)
    for result in (validate(), generate()):
        assert_refused(result)
        assert result.stderr.startswith(
            f"{copied}: a revision `cloudretail generate` did not write; Alembic would run it"
        ), result.stderr
    assert snapshot(project) == before


def test_an_undecodable_revision_is_refused_not_rewritten(project: Path):
    revision = only_revision()
    revision.write_bytes(b"\xff\xfe" + revision.read_bytes())
    before = snapshot(project)
    result = generate()
    assert_refused(result)
    assert result.stderr.startswith(f"{revision}: cannot read the revision (not UTF-8 text)")
    assert snapshot(project) == before


# ----------------------------------------------------------------------------- dropped column


def drop_created_at_column() -> str:
    text = Path("spec.yaml").read_text()
    text = text.replace("          created_at: {type: timestamp, default: now}\n", "")
    Path("spec.yaml").write_text(text)
    return text


def test_a_dropped_column_is_refused_at_its_table_in_the_spec(project: Path):
    text = drop_created_at_column()
    before = snapshot(project)
    result = generate()
    assert_refused(result)
    line = line_of(text, "      items:")
    assert result.stderr.splitlines()[0] == (
        f"spec.yaml:{line}:7: services.catalog.tables.items: dropping column 'created_at' loses data; "
        "mark the change allowed in the spec (allow_destructive) or add renamed_from"
    )
    assert result.stderr.splitlines()[-1] == "1 problem found; nothing was written."
    assert snapshot(project) == before


def test_validate_refuses_the_destructive_change_generate_refuses(project: Path):
    text = drop_created_at_column()
    result = validate()
    assert_refused(result)
    line = line_of(text, "      items:")
    assert result.stderr.startswith(
        f"spec.yaml:{line}:7: services.catalog.tables.items: dropping column 'created_at' loses data"
    )


def test_validate_checks_against_generated_by_default(project: Path):
    Path("out").rename("generated")
    drop_created_at_column()
    result = runner.invoke(app, ["validate", "spec.yaml", "--handlers", "handlers"])
    assert_refused(result)
    assert "dropping column 'created_at'" in result.stderr


def test_an_allowed_drop_validates_and_generates(project: Path):
    text = drop_created_at_column().replace(
        "      items:\n", "      items:\n        allow_destructive: true\n"
    )
    Path("spec.yaml").write_text(text)
    assert validate().exit_code == 0
    assert generate().exit_code == 0


def test_a_dropped_table_is_refused_at_the_service_tables(project: Path):
    text = Path("spec.yaml").read_text()
    tags = "      tags:\n        columns:\n          id: {type: uuid, primary_key: true}\n"
    Path("spec.yaml").write_text(text.replace("    tables:\n", "    tables:\n" + tags))
    assert generate().exit_code == 0
    Path("spec.yaml").write_text(text)
    before = snapshot(project)
    result = generate()
    assert_refused(result)
    line = line_of(text, "    tables:")
    assert result.stderr.startswith(
        f"spec.yaml:{line}:5: services.catalog.tables: dropping table 'tags' loses data; "
        "mark a table of the same database that stays allow_destructive: true"
    ), result.stderr
    assert snapshot(project) == before
    Path("spec.yaml").write_text(
        text.replace("      items:\n", "      items:\n        allow_destructive: true\n")
    )
    assert generate().exit_code == 0


def test_a_narrowed_column_is_refused_at_the_column(project: Path):
    text = Path("spec.yaml").read_text()
    text = text.replace("name: {type: string, length: 80,", "name: {type: string, length: 20,")
    Path("spec.yaml").write_text(text)
    result = generate()
    assert_refused(result)
    line = line_of(text, "          name: {type: string, length: 20, nullable: false}")
    assert result.stderr.startswith(
        f"spec.yaml:{line}:11: services.catalog.tables.items.columns.name: narrowing the type "
        "from VARCHAR(80) to VARCHAR(20) may lose data"
    ), result.stderr


def test_allow_destructive_on_one_table_does_not_allow_dropping_another_tables_column(
    project: Path,
):
    text = Path("spec.yaml").read_text()
    tags = (
        "      tags:\n        allow_destructive: true\n        columns:\n"
        "          id: {type: uuid, primary_key: true}\n          label: {type: text}\n"
    )
    text = text.replace("    tables:\n", "    tables:\n" + tags)
    Path("spec.yaml").write_text(text)
    assert generate().exit_code == 0
    # items loses a column; only tags says that its own data may go
    Path("spec.yaml").write_text(
        text.replace("          created_at: {type: timestamp, default: now}\n", "")
    )
    before = snapshot(project)
    result = generate()
    assert_refused(result)
    assert "services.catalog.tables.items: dropping column 'created_at' loses data" in result.stderr
    assert snapshot(project) == before
    # tags may lose its own column
    Path("spec.yaml").write_text(text.replace("          label: {type: text}\n", ""))
    assert generate().exit_code == 0


def test_control_characters_of_the_spec_are_escaped_in_messages(project: Path):
    """A key with a carriage return or a terminal escape must not break a message into
    unlocated lines, nor reach the terminal."""
    text = Path("spec.yaml").read_text()
    Path("spec.yaml").write_text(text.replace("platform:\n", 'platform:\n  "\\r\\e[2J": 1\n'))
    for result in (validate(), generate()):
        assert_refused(result)
        assert "\x1b" not in result.stderr and "\r" not in result.stderr
        first, *_, last = result.stderr.splitlines()
        assert first == (
            "spec.yaml:4:3: platform.\\r\\x1b[2J: unknown key '\\r\\x1b[2J'; expected one of: "
            "name, namespace, registry, domain, cors_origins, secrets, ingress, certificates"
        )
        assert last == "1 problem found; nothing was written."


# ----------------------------------------------------------------------------- revision history


def without_catalog_events(text: str) -> str:
    """The minimal spec with a catalog that neither publishes nor consumes: its database
    holds only the spec's tables (no outbox), so dropping those drops them all."""
    text = text.replace(
        "    events:\n      publishes: [item.created]\n      consumes: [cart.checked_out]\n", ""
    )
    return text.replace(
        "  item.created:\n    key: item_id\n"
        "    payload: {item_id: uuid, price: decimal, note: string | null}\n",
        "",
    )


def without_catalog_tables(text: str) -> str:
    start = text.index("    tables:\n")
    text = text[:start] + text[text.index("    routes:\n", start) :]
    lines = [line for line in text.splitlines() if "crud: items" not in line]
    at = lines.index("    routes:", lines.index("  catalog:"))
    lines.insert(
        at + 1,
        '      - {method: GET, path: "/api/items/{id}", auth: public, handler: get_item, name: get}',
    )
    return "\n".join(lines) + "\n"


def test_dropping_every_table_of_a_database_does_not_delete_its_history(project: Path):
    text = without_catalog_events(Path("spec.yaml").read_text())
    Path("spec.yaml").write_text(text)
    shutil.rmtree("out")  # a catalog that never had events (an outbox)
    assert generate().exit_code == 0
    Path("spec.yaml").write_text(without_catalog_tables(text))
    before = snapshot(project)
    for result in (validate(), generate()):
        assert_refused(result)
        line = line_of(text, "  catalog:")
        assert result.stderr.splitlines()[0] == (
            f"spec.yaml:{line}:3: services.catalog.tables: dropping every table loses data and "
            "`generate` would delete their revisions (services/catalog/migrations/versions in "
            "the output folder); if the data may go, delete that folder first"
        )
    assert snapshot(project) == before
    # the way out the message gives
    shutil.rmtree(VERSIONS)
    assert generate().exit_code == 0
    assert not Path("out/services/catalog/models.py").exists()


def test_removing_a_service_with_tables_does_not_delete_its_history(project: Path):
    text = Path("spec.yaml").read_text()
    extra = (
        "  archive:\n    port: 3009\n    database: shop_archive\n    prefix: /api/archive\n"
        "    tables:\n      records:\n        columns:\n"
        "          id: {type: uuid, primary_key: true}\n"
    )
    Path("spec.yaml").write_text(text + extra)
    assert generate().exit_code == 0
    Path("spec.yaml").write_text(text)
    before = snapshot(project)
    result = generate()
    assert_refused(result)
    assert result.stderr.splitlines()[0] == (
        f"spec.yaml:{line_of(text, 'services:')}:1: services.archive: dropping every table loses "
        "data and `generate` would delete their revisions (services/archive/migrations/versions "
        "in the output folder); if the data may go, delete that folder first"
    )
    assert snapshot(project) == before


# ----------------------------------------------------------------------------- handlers folder


def test_an_undecodable_handler_module_is_named_not_a_traceback(project: Path):
    Path("handlers/cart.py").write_bytes(b"\xff\xfe not utf-8\n")
    before = snapshot(project)
    for result in (validate(), generate()):
        assert_refused(result)
        assert result.stderr.startswith("handlers/cart.py: cannot read (not UTF-8 text)")
    assert snapshot(project) == before


def test_a_handlers_folder_that_is_a_file_is_refused_before_anything_is_written(project: Path):
    shutil.rmtree("handlers")
    Path("handlers").write_text("not a folder\n")
    Path("spec.yaml").write_text(Path("spec.yaml").read_text().replace("length: 80", "length: 120"))
    before = snapshot(project)
    result = generate()
    assert_refused(result)
    assert result.stderr.startswith("handlers: not a folder")
    assert snapshot(project) == before


# ----------------------------------------------------------------------------- free text


def test_a_description_is_one_line_of_text(project: Path):
    """A description is copied into YAML comments, Markdown tables and docstrings: a line
    break there would add lines of its own to the generated files (here a `kind:` into a
    Kubernetes manifest)."""
    text = Path("spec.yaml").read_text()
    described = text.replace(
        "  shop-events: {partitions: 2,",
        '  shop-events: {description: "Shop events\\nkind: Secret", partitions: 2,',
    )
    Path("spec.yaml").write_text(described)
    before = snapshot(project)
    for result in (validate(), generate()):
        assert_refused(result)
        line = line_of(described, next(x for x in described.splitlines() if "Shop events" in x))
        assert result.stderr.splitlines()[0] == (
            f"spec.yaml:{line}:30: topics.shop-events.description: a description is one line "
            "of printable text (it is copied into comments, tables and docstrings)"
        )
    assert snapshot(project) == before


@pytest.mark.parametrize(
    "description", ['Says """hi"""', "Ends with a backslash \\", 'Ends with a "quote"']
)
def test_a_service_description_cannot_break_the_generated_python(project: Path, description: str):
    spec = yaml.safe_load(Path("spec.yaml").read_text())
    spec["services"]["catalog"]["description"] = description
    Path("spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    assert generate().exit_code == 0
    for path in sorted(Path("out").rglob("*.py")):
        compile(path.read_text(), str(path), "exec")


def test_a_body_model_the_handlers_lack_is_stubbed_as_a_class(tmp_path: Path):
    from cloudretail.generator import load_platform
    from cloudretail.generator.handlers import plan_stubs

    data = yaml.safe_load((ROOT / "tests" / "specs" / "minimal.yaml").read_text())
    data["services"]["cart"]["routes"][0]["body"] = "Checkout"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    platform = load_platform(spec)
    folder = tmp_path / "handlers"
    (change,) = [c for c in plan_stubs(platform, folder) if c.path.name == "cart.py"]
    assert "Checkout" in change.handlers
    namespace: dict[str, object] = {}
    exec(compile(change.text, str(change.path), "exec"), namespace)  # it imports and runs
    model = namespace["Checkout"]
    assert model.model_json_schema()["title"] == "Checkout"  # type: ignore[attr-defined]
    # Written once, the class is found: nothing more to stub.
    folder.mkdir()
    change.path.write_text(change.text)
    assert not [c for c in plan_stubs(platform, folder) if c.path.name == "cart.py"]
