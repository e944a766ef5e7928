"""`cloudretail upgrade`: a project made by `init` takes a newer project template with
copier's three-way update; a local edit that collides with the template's is reported."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from cloudretail import __version__
from cloudretail.cli import app
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "templates" / "project"
runner = CliRunner()
GIT = (
    "git",
    "-c",
    "user.name=Test",
    "-c",
    "user.email=test@localhost",
    "-c",
    "commit.gpgsign=false",
)

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="copier's update needs git")


def git(project: Path, *args: str) -> str:
    done = subprocess.run([*GIT, *args], cwd=project, capture_output=True, text=True, check=True)
    return done.stdout


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project made by `cloudretail init` and committed, as its README says to."""
    if "+" in __version__:
        pytest.skip("init needs an installed CloudRetail")
    monkeypatch.setenv("CLOUDRETAIL_TEMPLATE_STORE", str(tmp_path / "store"))
    folder = tmp_path / "shop"
    made = runner.invoke(app, ["init", str(folder)])
    assert made.exit_code == 0, made.output
    git(folder, "init", "--quiet")
    git(folder, "add", ".")
    git(folder, "commit", "--quiet", "-m", "New platform")
    return folder


@pytest.fixture
def newer(tmp_path: Path) -> Path:
    """The project template of a newer CloudRetail: its README's first line and its
    Makefile's end changed."""
    folder = tmp_path / "template-0.2.0"
    shutil.copytree(TEMPLATE, folder)
    readme = folder / "README.md.jinja"
    lines = readme.read_text().splitlines(keepends=True)
    readme.write_text("# {{ name }}, a CloudRetail platform\n" + "".join(lines[1:]))
    with (folder / "Makefile.jinja").open("a") as makefile:
        makefile.write("\nhelp: ## what the targets do\n\t@grep -E '^[a-z]+:' Makefile\n")
    return folder


def upgrade(project: Path, template: Path, *more: str):
    return runner.invoke(
        app,
        [
            "upgrade",
            str(project),
            "--template",
            str(template),
            "--template-version",
            "0.2.0",
            *more,
        ],
    )


def test_the_answers_file_names_the_template_version(project: Path):
    answers = yaml.safe_load((project / ".cloudretail-answers.yml").read_text())
    assert answers["_commit"] == __version__
    assert answers["cloudretail_version"] == __version__
    assert answers["name"] == "shop"


def test_a_template_change_merges_with_the_projects_own(project: Path, newer: Path):
    # The project's own change, away from what the template changes.
    handlers = project / "handlers" / "__init__.py"
    handlers.write_text(handlers.read_text() + "# our own note\n")
    git(project, "commit", "--quiet", "-am", "A note of ours")
    result = upgrade(project, newer)
    assert result.exit_code == 0, result.output
    assert "conflict" not in result.output
    readme = (project / "README.md").read_text()
    assert readme.startswith("# shop, a CloudRetail platform\n")
    assert "help: ## what the targets do" in (project / "Makefile").read_text()
    assert handlers.read_text().endswith("# our own note\n")  # kept
    pin = '"cloudretail==0.2.0"'
    assert pin in (project / "pyproject.toml").read_text()  # the answer given on upgrade
    answers = yaml.safe_load((project / ".cloudretail-answers.yml").read_text())
    assert answers["_commit"] == "0.2.0" and answers["cloudretail_version"] == "0.2.0"
    # Nothing committed: the changes wait for review.
    changed = {line[3:] for line in git(project, "status", "--porcelain").splitlines()}
    assert {"README.md", "Makefile", "pyproject.toml", ".cloudretail-answers.yml"} <= changed
    # Once committed, upgrading again to the same template changes nothing.
    git(project, "commit", "--quiet", "-am", "Template 0.2.0")
    again = upgrade(project, newer)
    assert again.exit_code == 0, again.output
    assert "already at" in again.stdout
    assert git(project, "status", "--porcelain") == ""


def test_a_local_edit_that_conflicts_is_named_and_exits_1(project: Path, newer: Path):
    readme = project / "README.md"
    lines = readme.read_text().splitlines(keepends=True)
    readme.write_text("# shop: our shop's own title\n" + "".join(lines[1:]))
    git(project, "commit", "--quiet", "-am", "Our title")
    result = upgrade(project, newer)
    assert result.exit_code == 1, result.output
    assert "conflict README.md" in " ".join(result.stdout.split())
    assert "1 file(s) with conflicts: README.md" in result.stderr
    text = readme.read_text()
    assert "<<<<<<< " in text and ">>>>>>> " in text
    assert "# shop: our shop's own title" in text and "# shop, a CloudRetail platform" in text
    # What did not conflict merged all the same.
    assert "help: ## what the targets do" in (project / "Makefile").read_text()


def test_uncommitted_changes_are_refused(project: Path, newer: Path):
    (project / "README.md").write_text("work in progress\n")
    result = upgrade(project, newer)
    assert result.exit_code == 2
    assert "uncommitted changes (README.md)" in result.stderr
    assert (project / "README.md").read_text() == "work in progress\n"


def test_a_folder_init_did_not_make_is_refused(tmp_path: Path, newer: Path):
    folder = tmp_path / "other"
    folder.mkdir()
    git(folder, "init", "--quiet")
    result = upgrade(folder, newer)
    assert result.exit_code == 2
    assert "made by `cloudretail init`" in result.stderr


def test_a_template_the_store_lacks_can_be_given(
    project: Path, newer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Another machine: its store never saw the template the project was made from."""
    monkeypatch.setenv("CLOUDRETAIL_TEMPLATE_STORE", str(tmp_path / "elsewhere"))
    lacking = upgrade(project, newer)
    assert lacking.exit_code == 3
    assert "is not in the template store" in lacking.stderr and "--base" in lacking.stderr
    assert "Traceback" not in lacking.output
    given = upgrade(project, newer, "--base", str(TEMPLATE))
    assert given.exit_code == 0, given.output
    assert (project / "README.md").read_text().startswith("# shop, a CloudRetail platform\n")
