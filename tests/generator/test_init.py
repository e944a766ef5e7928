"""`cloudretail init`: a new project (copier) whose spec validates and generates."""

from __future__ import annotations

import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest
from cloudretail.cli import app
from cloudretail.generator import generate, load_platform
from pathspec import PathSpec
from typer.testing import CliRunner

runner = CliRunner()


def test_init_makes_a_project_that_generates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    folder = tmp_path / "acme"
    result = runner.invoke(app, ["init", str(folder), "--name", "acme"])
    assert result.exit_code == 0, result.output
    spec = folder / "spec" / "cloudretail.yaml"
    assert "name: acme" in spec.read_text()
    assert (folder / "handlers" / "__init__.py").exists()
    monkeypatch.chdir(folder)
    platform = load_platform(Path("spec/cloudretail.yaml"))
    assert platform.namespace == "acme"
    assert [topic.name for topic in platform.topics] == ["acme-events"]
    done = generate(Path("spec/cloudretail.yaml"), Path("generated"))
    assert done.plan.added and done.stubs  # handlers stubbed for the spec's routes and events
    assert (folder / "handlers" / "cart.py").exists()
    # ... after which the spec is complete: validate finds every handler.
    load_platform(Path("spec/cloudretail.yaml"), handlers_dir=Path("handlers"))


def test_a_new_project_keeps_its_local_state_out_of_git_and_images(tmp_path: Path):
    """`up` keeps secrets.json and the JWT signing key in .cloudretail/: a new project's
    git and its image build context both leave it out, with the virtual environment."""
    folder = tmp_path / "acme"
    assert runner.invoke(app, ["init", str(folder), "--name", "acme"]).exit_code == 0
    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    local = [".cloudretail/secrets.json", ".cloudretail/keys/dev.pem", ".venv/bin/python"]
    for path in local:
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text("x")
    ignored = subprocess.run(
        ["git", "-C", str(folder), "check-ignore", *local, "spec/cloudretail.yaml"],
        capture_output=True,
        text=True,
    )
    assert ignored.stdout.split() == local  # ... and the spec is not ignored
    docker = PathSpec.from_lines("gitignore", (folder / ".dockerignore").read_text().splitlines())
    assert all(docker.match_file(path) for path in local)
    assert not docker.match_file("handlers/__init__.py")


def test_version(tmp_path: Path):
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"cloudretail {version('cloudretail')}"


def test_init_refuses_a_bad_name_and_a_full_folder(tmp_path: Path):
    bad = runner.invoke(app, ["init", str(tmp_path / "x"), "--name", "Not Valid"])
    assert bad.exit_code == 2
    assert "lower-case letters" in bad.stderr
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    refused = runner.invoke(app, ["init", str(full)])
    assert refused.exit_code == 2
    assert "not empty" in refused.stderr
    assert (full / "keep.txt").read_text() == "mine"


def test_validate_finds_the_projects_handlers_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """`validate` looks for handlers where `generate` writes them (handlers/ beside spec/),
    not in whatever folder it is run from."""
    assert runner.invoke(app, ["init", str(tmp_path / "acme"), "--name", "acme"]).exit_code == 0
    monkeypatch.chdir(tmp_path / "acme")
    generate(Path("spec/cloudretail.yaml"), Path("generated"))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(
        app, ["validate", "acme/spec/cloudretail.yaml", "--out", "acme/generated"]
    )
    assert result.exit_code == 0, result.output
