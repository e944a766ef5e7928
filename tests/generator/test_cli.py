from __future__ import annotations

import json
from pathlib import Path

import pytest
from cloudretail.cli import app
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
INVALID = sorted((ROOT / "tests" / "specs" / "invalid").glob("*.yaml"))
runner = CliRunner()


@pytest.mark.parametrize("case", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_spec_output(case: Path, in_root: Path, snapshot):
    relative = case.relative_to(ROOT).as_posix()
    result = runner.invoke(app, ["validate", relative])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    # every problem names the file, the line and the column, then the location in the document
    for line in lines[:-1]:
        assert line.startswith(f"{relative}:"), line
        assert line.split(":")[1].isdigit() and line.split(":")[2].isdigit(), line
    assert result.stderr == snapshot


@pytest.mark.parametrize("case", INVALID, ids=[p.stem for p in INVALID])
def test_generate_writes_nothing_for_an_invalid_spec(case: Path, in_root: Path, tmp_path: Path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["generate", "--spec", str(case), "--out", str(out)])
    assert result.exit_code == 2
    assert not out.exists()


def test_validate_prints_a_summary(in_root: Path):
    result = runner.invoke(app, ["validate"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("spec/cloudretail.yaml: valid\n")
    assert "user:3001, product:3002, order:3003, inventory:3004, payment:3005" in result.stdout
    assert "order->inventory, order->payment" in result.stdout
    assert len(result.stdout.splitlines()) <= 24  # one screen


def test_missing_spec_file(in_root: Path):
    result = runner.invoke(app, ["validate", "nope.yaml"])
    assert result.exit_code == 3  # the machine's (no such file), not the spec's
    assert result.stderr.startswith("nope.yaml:1:1: file not found")


def test_generate_then_check(in_root: Path, tmp_path: Path):
    out = tmp_path / "gen"
    first = runner.invoke(app, ["generate", "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert "added" in first.stdout
    fresh = runner.invoke(app, ["generate", "--out", str(out), "--check"])
    assert fresh.exit_code == 0
    assert "up to date" in fresh.stdout

    (out / "kafka" / "topics.yaml").write_text("edited\n")
    stale = runner.invoke(app, ["generate", "--out", str(out), "--check"])
    assert stale.exit_code == 1
    assert "--- a/kafka/topics.yaml" in stale.stdout
    assert "-edited" in stale.stdout
    assert (out / "kafka" / "topics.yaml").read_text() == "edited\n"  # --check wrote nothing

    again = runner.invoke(app, ["generate", "--out", str(out)])
    assert "changed" in again.stdout and "kafka/topics.yaml" in again.stdout
    assert runner.invoke(app, ["generate", "--out", str(out), "--check"]).exit_code == 0


def test_generate_refuses_to_overwrite_unowned_files(in_root: Path, tmp_path: Path):
    out = tmp_path / "gen"
    (out / "kafka").mkdir(parents=True)
    (out / "kafka" / "topics.yaml").write_text("my own\n")
    result = runner.invoke(app, ["generate", "--out", str(out)])
    assert result.exit_code == 2
    assert "refusing to overwrite" in result.stderr
    assert (out / "kafka" / "topics.yaml").read_text() == "my own\n"


def test_schema_is_json(in_root: Path):
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["title"] == "Spec"


def test_up_refuses_before_starting_anything(in_root: Path, tmp_path: Path):
    """Unknown --only names, a missing demo file and a stack already running from the data
    folder are each one clear line and exit 2; nothing is started."""
    import json
    import os

    data = tmp_path / "data"
    only = runner.invoke(app, ["up", "--data-dir", str(data), "--only", "nope"])
    assert only.exit_code == 2 and "--only names unknown services: nope" in only.stderr
    spec = tmp_path / "spec" / "cloudretail.yaml"
    spec.parent.mkdir()
    spec.write_text((in_root / "spec" / "cloudretail.yaml").read_text())
    no_demo = runner.invoke(app, ["up", "--spec", str(spec), "--data-dir", str(data), "--demo"])
    assert no_demo.exit_code == 2 and "--demo:" in no_demo.stderr and "demo.yaml" in no_demo.stderr
    data.mkdir()
    (data / "state.json").write_text(json.dumps({"supervisor": os.getpid(), "status": "ready"}))
    running = runner.invoke(app, ["up", "--data-dir", str(data)])
    assert running.exit_code == 2 and "a stack is already running" in running.stderr
    assert not (data / "secrets.json").exists()  # refused before it touched the data folder
