"""The spec's JSON Schema: described for editors, committed beside the spec, named by the
specs, kept current by `generate`, and in agreement with `cloudretail validate`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from cloudretail.cli import app
from cloudretail.generator.errors import SpecError
from cloudretail.generator.loader import load_text
from cloudretail.generator.schema import MODELINE, SCHEMA_ID, modeline_target, schema_text
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "spec" / "cloudretail.schema.json"
STARTER = ROOT / "templates" / "project" / "spec" / "cloudretail.yaml.jinja"
INVALID = sorted((ROOT / "tests" / "specs" / "invalid").glob("*.yaml"))
runner = CliRunner()


def _platform_specs() -> list[Path]:
    """Every platform spec of the repository (not the demo data beside some)."""
    candidates = [
        *(ROOT / "spec").glob("*.yaml"),
        *(ROOT / "examples").glob("*/spec/*.yaml"),
        *(ROOT / "tests" / "specs").glob("*.yaml"),
    ]
    return sorted(path for path in candidates if "services:" in path.read_text())


def _starter(folder: Path) -> Path:
    text = STARTER.read_text().replace("{{ name }}", "shop").replace("{{ domain }}", "shop.example")
    path = folder / "spec" / "cloudretail.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _validator() -> Draft202012Validator:
    """The schema this code makes (the committed file is compared with it on its own)."""
    schema = json.loads(schema_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _schema_accepts(path: Path) -> bool:
    """The schema's verdict on a YAML file, as an editor reads it (a file YAML cannot read
    is refused by both)."""
    try:
        data = load_text(path.read_text(), path.name).data
    except SpecError:
        return False
    return not list(_validator().iter_errors(data))


def _validate(spec: Path, scratch: Path) -> int:
    """`cloudretail validate` on a spec alone: against an empty output folder, with the
    handler stubs `generate` writes for it (a project's own handlers are not the spec's).
    A copy of it: `generate` would refresh the schema file a repository spec names."""
    handlers = scratch / "handlers"
    scratch.mkdir(parents=True, exist_ok=True)
    spec = Path(shutil.copy(spec, scratch / spec.name))
    runner.invoke(
        app,
        ["generate", "--spec", str(spec), "--out", str(scratch / "g"), "--handlers", str(handlers)],
    )
    result = runner.invoke(
        app, ["validate", str(spec), "--out", str(scratch / "empty"), "--handlers", str(handlers)]
    )
    return result.exit_code


def _walk(schema: dict[str, Any]):
    yield "", schema
    yield from schema.get("$defs", {}).items()


def test_the_committed_schema_is_what_the_command_prints():
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    assert result.stdout == COMMITTED.read_text(), "run `cloudretail generate`"
    assert result.stdout == schema_text()


def test_every_key_has_a_description_and_the_schema_an_id():
    schema = json.loads(schema_text())
    assert schema["$id"] == SCHEMA_ID
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    missing = [
        f"{model or 'Spec'}.{key}"
        for model, definition in _walk(schema)
        for key, field in definition.get("properties", {}).items()
        if not field.get("description")
    ]
    assert missing == []
    assert all(definition.get("description") for _, definition in _walk(schema))


@pytest.mark.parametrize("path", ["spec/cloudretail.yaml", "examples/library/spec/library.yaml"])
def test_the_specs_name_the_schema_on_their_first_line(path: str):
    spec = ROOT / path
    first = spec.read_text().splitlines()[0]
    target = modeline_target(first)
    assert target is not None, first
    assert (spec.parent / target).resolve() == COMMITTED


def test_the_spec_init_writes_names_a_schema_init_writes(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CLOUDRETAIL_TEMPLATE_STORE", str(tmp_path / "store"))
    project = tmp_path / "shop"
    result = runner.invoke(app, ["init", str(project)])
    assert result.exit_code == 0, result.output
    spec = project / "spec" / "cloudretail.yaml"
    assert spec.read_text().splitlines()[0] == MODELINE
    assert (spec.parent / "cloudretail.schema.json").read_text() == schema_text()


def test_generate_keeps_the_named_schema_current(tmp_path: Path):
    spec = _starter(tmp_path)
    args = ["--spec", str(spec), "--out", str(tmp_path / "g"), "--handlers", str(tmp_path / "h")]
    schema = spec.parent / "cloudretail.schema.json"
    assert runner.invoke(app, ["generate", *args]).exit_code == 0
    assert schema.read_text() == schema_text()
    assert runner.invoke(app, ["generate", "--check", *args]).exit_code == 0
    schema.write_text("{}\n")
    stale = runner.invoke(app, ["generate", "--check", *args])
    assert stale.exit_code == 1
    assert f"{schema} is not this CloudRetail's spec schema" in stale.stderr
    assert schema.read_text() == "{}\n"  # --check writes nothing
    assert runner.invoke(app, ["generate", *args]).exit_code == 0
    assert schema.read_text() == schema_text()


def test_generate_leaves_a_schema_outside_the_spec_folder_alone(tmp_path: Path):
    spec = _starter(tmp_path / "project")
    text = spec.read_text().replace(MODELINE, "# yaml-language-server: $schema=../outside.json")
    spec.write_text(text)
    args = ["--spec", str(spec), "--out", str(tmp_path / "g"), "--handlers", str(tmp_path / "h")]
    assert runner.invoke(app, ["generate", *args]).exit_code == 0
    assert not (tmp_path / "project" / "outside.json").exists()
    assert not (spec.parent / "cloudretail.schema.json").exists()


def test_every_spec_of_the_repository_passes_the_schema_and_validate(tmp_path: Path):
    specs = [*_platform_specs(), _starter(tmp_path / "starter")]
    assert len(specs) >= 4
    for index, spec in enumerate(specs):
        assert _schema_accepts(spec), spec
        assert _validate(spec, tmp_path / str(index)) == 0, spec


def test_the_starter_specs_index_shorthand_passes_the_schema(tmp_path: Path):
    """`indexes: [name]`, shorthand for `{columns: [name]}`, which `validate` accepts."""
    spec = _starter(tmp_path)
    assert "indexes: [name]" in spec.read_text()
    assert _schema_accepts(spec)


@pytest.mark.parametrize("case", INVALID, ids=[path.stem for path in INVALID])
def test_what_the_schema_rejects_validate_rejects(case: Path, tmp_path: Path):
    """`validate` may refuse more than the schema (what only cross-references show: a
    duplicate port, an unknown service), never less."""
    if not _schema_accepts(case):
        assert _validate(case, tmp_path) == 2


def test_the_schema_refuses_part_of_the_invalid_corpus():
    refused = [case.stem for case in INVALID if not _schema_accepts(case)]
    assert {"unknown_key", "wrong_type", "malformed_yaml", "empty"} <= set(refused)


def _mutations() -> list[tuple[str, Any]]:
    """Single changes to a valid spec, each one the schema must refuse."""
    return [
        (
            "a column type no kind has",
            ("services", "catalog", "tables", "items", "columns", "price", "type"),
            "decimel",
        ),
        ("a port out of range", ("gateway", "port"), 70000),
        ("an unknown key", ("gateway", "prot"), 8080),
        ("a route method", ("services", "catalog", "routes", 0, "method"), "FETCH"),
        ("a duration", ("gateway", "rate_limit", "per"), "a minute"),
        ("a payload type", ("events", "item.created", "payload", "price"), "money"),
        ("a missing key", ("services", "cart", "port"), None),
        ("an index of a number", ("services", "catalog", "tables", "items", "indexes"), [3]),
    ]


@pytest.mark.parametrize(("what", "where", "value"), _mutations(), ids=[m[0] for m in _mutations()])
def test_a_change_the_schema_refuses_validate_refuses(
    what: str, where: tuple[Any, ...], value: Any, tmp_path: Path
):
    spec = _starter(tmp_path)
    data = yaml.safe_load(spec.read_text())
    node = data
    for part in where[:-1]:
        node = node[part]
    if value is None:
        del node[where[-1]]
    else:
        node[where[-1]] = value
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    assert not _schema_accepts(spec), what
    assert _validate(spec, tmp_path) == 2, what
