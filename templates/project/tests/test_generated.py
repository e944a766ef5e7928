"""The spec is valid and generated/ is what it renders to with the pinned CloudRetail: after
editing the spec, run `cloudretail generate` and commit both."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The command of the environment the tests run in: the project's own .venv.
CLOUDRETAIL = Path(sys.executable).parent / "cloudretail"


@pytest.mark.parametrize("command", [["validate"], ["generate", "--check"]], ids=" ".join)
def test_the_spec_and_generated(command: list[str]) -> None:
    done = subprocess.run(
        [str(CLOUDRETAIL), *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
