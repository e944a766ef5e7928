"""Generated Python goes through ruff before it is compared or written: imports sorted and
unused ones dropped, then formatted, with fixed settings (never the project's own), so the
same spec gives the same bytes on every machine that has the pinned ruff.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from cloudretail.generator.errors import CloudRetailError

# The settings generated code is written in, whatever the project around it configures.
SETTINGS = (
    "--isolated",
    "--line-length=100",
    "--target-version=py311",
    "--config=lint.isort.known-first-party=['generated', 'handlers']",
    "--config=lint.isort.known-third-party=['cloudretail']",
)


class FormatterError(CloudRetailError):
    """ruff is missing or refused the generated code (a generator bug, named in full)."""


def _ruff() -> str:
    try:
        from ruff import find_ruff_bin
    except ImportError:
        raise FormatterError(
            "ruff is not installed; reinstall CloudRetail (it depends on it)"
        ) from None
    found: str = find_ruff_bin()
    return found


def format_python(files: Mapping[str, str]) -> dict[str, str]:
    """`files` with every `.py` text run through `ruff check --fix` (isort, unused imports)
    and `ruff format`; other files as they are."""
    python = {path: text for path, text in files.items() if path.endswith(".py")}
    if not python:
        return dict(files)
    ruff = _ruff()
    with tempfile.TemporaryDirectory(prefix="cloudretail-format-") as scratch:
        root = Path(scratch)
        for path, text in python.items():
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        for command in (
            ["check", "--fix-only", "--select=I,F401", "--exit-zero", *SETTINGS],
            ["format", *SETTINGS],
        ):
            done = subprocess.run(
                [ruff, *command, "--no-cache", "--quiet", "."],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if done.returncode != 0:
                raise FormatterError(
                    f"ruff {command[0]} failed on the generated code:\n{done.stderr}"
                )
        formatted = {path: (root / path).read_text(encoding="utf-8") for path in python}
    return {**files, **formatted}
