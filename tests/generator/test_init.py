"""`cloudretail init`: a complete new project (copier, then `generate`): a spec that
validates and generates, and what installs, runs and checks it. (A project made from a built
wheel and run: tests/packaging/test_new_project.py.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from cloudretail.cli import app
from cloudretail.generator import generate, load_platform
from cloudretail.generator.targets.images import UV_VERSION
from pathspec import PathSpec
from typer.testing import CliRunner

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One project made by `init`, for the tests that only read it."""
    folder = tmp_path_factory.mktemp("init") / "acme"
    result = runner.invoke(app, ["init", str(folder), "--name", "acme"])
    assert result.exit_code == 0, result.output
    return folder


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
    # init generated it, from inside the project: `generate --check` there agrees, and the
    # handlers the spec names are stubbed.
    assert (folder / "handlers" / "cart.py").exists()
    done = generate(Path("spec/cloudretail.yaml"), Path("generated"), check=True)
    assert not done.stale and not done.stubs and len(done.plan.unchanged) > 50
    # ... so the spec is complete: validate finds every handler.
    load_platform(Path("spec/cloudretail.yaml"), handlers_dir=Path("handlers"))
    # The closing message: what was made, and what to run next.
    for shown in ("pyproject.toml", "Makefile", ".github/workflows/ci.yml", "tests/",
                  "make test", "make up", "http://127.0.0.1:8280", "checkout"):  # fmt: skip
        assert shown in result.stdout, shown


def test_the_project_pins_this_release_for_its_services_and_tools(project: Path):
    """The services need the runtime alone (what the images install: `--no-dev`); the dev
    group brings the command line, the local stack and what `make test` runs."""
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    release = version("cloudretail")
    assert pyproject["project"]["name"] == "acme"
    assert pyproject["project"]["dependencies"] == [f"cloudretail=={release}"]
    dev = pyproject["dependency-groups"]["dev"]
    assert f"cloudretail[local]=={release}" in dev
    tools = {re.split(r"[=<>\[]", requirement)[0] for requirement in dev}
    assert {"pytest", "pytest-asyncio", "ruff", "mypy"} <= tools, tools
    assert pyproject["tool"]["uv"]["package"] is False  # nothing of the project is built
    # Generated code imports `generated.*` and `handlers.*` from the project's root.
    pytest_options = pyproject["tool"]["pytest"]["ini_options"]
    assert pytest_options["pythonpath"] == ["."] and pytest_options["asyncio_mode"] == "auto"
    assert pyproject["tool"]["mypy"]["strict"] is True
    assert set(pyproject["tool"]["mypy"]["files"]) == {"generated", "handlers", "tests"}
    isort = pyproject["tool"]["ruff"]["lint"]["isort"]
    assert set(isort["known-first-party"]) == {"generated", "handlers"}


def _make(project: Path, target: str) -> str:
    """What `make -n TARGET` would run (nothing is run)."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    done = subprocess.run(
        [make, "-n", target], cwd=project, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_makefile_has_up_and_test_and_installs_from_the_lock(project: Path):
    makefile = (project / "Makefile").read_text()
    # uv, pinned to the release the generated Dockerfiles install, bootstrapped with pip.
    assert f"UV_VERSION := {UV_VERSION}" in makefile
    dockerfile = (project / "generated" / "gateway" / "Dockerfile").read_text()
    assert f"uv=={UV_VERSION}" in dockerfile
    first = _make(project, "test")
    assert '-m pip install --quiet --disable-pip-version-check "uv==' in first
    # The first install resolves and writes uv.lock; once it exists, installs must match it.
    assert re.search(r"uv sync --quiet +--python", first), first
    for command in ("ruff check .", "ruff format --check .", "bin/mypy", "-m pytest"):
        assert command in first, command
    (project / "uv.lock").write_text("")
    try:
        assert "uv sync --quiet --locked --python" in _make(project, "test")
    finally:
        (project / "uv.lock").unlink()
    up = _make(project, "up")
    assert "cloudretail generate" in up
    assert "cloudretail up --broker-port 9192 --mail-port 1125" in up


def test_the_ci_workflow_pins_its_actions_and_runs_the_checks(project: Path):
    text = (project / ".github" / "workflows" / "ci.yml").read_text()
    workflow = yaml.safe_load(text)
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    uses = [line.strip() for line in text.splitlines() if line.strip().startswith("- uses:")]
    assert len(uses) == len([step for step in steps if "uses" in step]) >= 2
    for line in uses:
        # A tag can be moved; a commit cannot. The comment says which release it is.
        assert re.fullmatch(r"- uses: [\w.-]+/[\w.-]+@[0-9a-f]{40} # v\d+(\.\d+)*", line), line
    runs = [step["run"] for step in steps if "run" in step]
    assert "make test" in runs
    assert ".venv/bin/cloudretail generate --check" in runs
    assert any("uv.lock" in run for run in runs)  # a missing lock fails CI
    assert workflow["permissions"] == {"contents": "read"}


def test_the_readme_names_only_what_exists(project: Path):
    """Every `make X` the README shows is a target of the Makefile, every file it names
    exists (or is the lock the first install writes)."""
    readme = (project / "README.md").read_text()
    targets = set(re.findall(r"^([a-z]+):", (project / "Makefile").read_text(), re.MULTILINE))
    shown = set(re.findall(r"(?:`|^)make ([a-z]+)", readme, re.MULTILINE))
    assert {"up", "test", "generate", "lock"} <= shown and shown <= targets, shown - targets
    named = set(re.findall(r"`((?:generated|spec|handlers|tests|\.github)/[\w./-]*)`", readme))
    assert named
    assert [path for path in sorted(named) if not (project / path).exists()] == []


def test_the_starters_ports_leave_this_repositorys_platforms_alone(project: Path):
    """`up` binds each deployable's spec port: a new project's stack can run beside this
    repository's and the library example's."""
    starter = load_platform(project / "spec" / "cloudretail.yaml")
    ours = load_platform(ROOT / "spec" / "cloudretail.yaml")
    library = load_platform(ROOT / "examples" / "library" / "spec" / "library.yaml")
    ports = {d.port for d in starter.deployables}
    assert len(ports) == 4
    for other in (ours, library):
        assert not ports & {d.port for d in other.deployables}, other.name


def test_a_new_project_keeps_its_local_state_out_of_git_and_images(tmp_path: Path):
    """`up` keeps secrets.json and the JWT signing key in .cloudretail/: a new project's
    git and its image build context both leave it out, with the virtual environment."""
    folder = tmp_path / "acme"
    assert runner.invoke(app, ["init", str(folder), "--name", "acme"]).exit_code == 0
    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    local = [
        ".cloudretail/secrets.json",
        ".cloudretail/keys/dev.pem",
        ".venv/bin/python",
        ".venv-tools/uv/bin/uv",
    ]
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


def test_init_refuses_to_pin_a_release_it_cannot_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Run from a checkout that was never installed, the tool has no release to pin."""
    import cloudretail

    monkeypatch.setattr(cloudretail, "__version__", "0+unknown")
    refused = runner.invoke(app, ["init", str(tmp_path / "acme")])
    assert refused.exit_code == 2
    assert "not an installed release" in refused.stderr
    assert not (tmp_path / "acme").exists()


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
