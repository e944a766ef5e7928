"""Each everyday change to the spec regenerates a small diff that lints with no hand edit.

A copy of the project (spec, handlers, generated) takes one change, `generate` runs, and
then: only the files that change should change, and ruff (check and format) and strict mypy
pass on what changed, with the project's own configuration, as `make lint` runs them.
"""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cloudretail.generator import generate

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _add_service(spec: dict[str, Any]) -> None:
    spec["services"]["reviews"] = {
        "description": "Product reviews",
        "port": 3010,
        "database": "cloudretail_reviews",
        "prefix": "/api/reviews",
        "tables": {
            "reviews": {
                "columns": {
                    "id": {"type": "uuid", "primary_key": True, "default": "gen_random_uuid"},
                    "product_id": {"type": "uuid", "nullable": False},
                    "rating": {"type": "integer", "nullable": False, "check": ">= 1"},
                }
            }
        },
        "routes": [
            {"method": "GET", "path": "/api/reviews", "auth": "public", "crud": "reviews.list"},
            {
                "method": "POST",
                "path": "/api/reviews",
                "auth": "authenticated",
                "handler": "review",
            },
        ],
    }


def _consume_event(spec: dict[str, Any]) -> None:
    spec["services"]["product"].setdefault("events", {}).setdefault("consumes", [])
    spec["services"]["product"]["events"]["consumes"].append("order.created")


def _add_column(spec: dict[str, Any]) -> None:
    products = spec["services"]["product"]["tables"]["products"]
    products["columns"]["weight_grams"] = {"type": "integer", "check": ">= 0"}


def _add_table(spec: dict[str, Any]) -> None:
    spec["services"]["product"]["tables"]["product_tags"] = {
        "columns": {
            "id": {"type": "uuid", "primary_key": True, "default": "gen_random_uuid"},
            "product_id": {"type": "uuid", "nullable": False},
            "tag": {"type": "string", "length": 40, "nullable": False},
        }
    }


def _rename_column(spec: dict[str, Any]) -> None:
    columns = spec["services"]["product"]["tables"]["products"]["columns"]
    spec["services"]["product"]["tables"]["products"]["columns"] = {
        ("picture_url" if name == "image_url" else name): (
            {**column, "renamed_from": "image_url"} if name == "image_url" else column
        )
        for name, column in columns.items()
    }


def _scale(spec: dict[str, Any]) -> None:
    spec["services"]["product"]["scaling"] = {"max": 25}


# change, the files it may touch (glob patterns), the Python it must leave lint-clean
CHANGES: dict[str, tuple[Callable[[dict[str, Any]], None], tuple[str, ...]]] = {
    "service": (
        _add_service,
        (
            "generated/services/reviews/*",
            "generated/services/reviews/migrations/*",
            "generated/services/reviews/migrations/versions/*",
            "generated/services/__init__.py",
            "generated/gateway/routes.yaml",
            "generated/k8s/*",
            "generated/ci/Jenkinsfile",
            "generated/compose.yaml",
            "generated/compose/*",
            "generated/docs/*",
            # its public list route joins the load test's browse journey
            "generated/loadtest/artillery.yaml",
            "handlers/reviews.py",
        ),
    ),
    "consumed event": (
        _consume_event,
        (
            "generated/services/product/app.py",
            "generated/services/product/migrations/versions/*",
            "generated/services/product/models.py",
            "generated/docs/*",
            "generated/k8s/*",
            "generated/kafka/*",
            "handlers/product.py",
        ),
    ),
    "column": (
        _add_column,
        (
            "generated/services/product/models.py",
            "generated/services/product/schemas.py",
            "generated/services/product/migrations/versions/*",
            # the column is in the API's bodies
            "generated/services/product/openapi.json",
            "generated/docs/*",
        ),
    ),
    "table": (
        _add_table,
        (
            "generated/services/product/models.py",
            "generated/services/product/schemas.py",
            "generated/services/product/migrations/versions/*",
            "generated/docs/*",
        ),
    ),
    "rename": (
        _rename_column,
        (
            "generated/services/product/models.py",
            "generated/services/product/schemas.py",
            "generated/services/product/migrations/versions/*",
            # the column is in the API's bodies
            "generated/services/product/openapi.json",
            "generated/docs/*",
        ),
    ),
    "scaling": (_scale, ("generated/k8s/*", "generated/docs/*")),
}


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for folder in ("generated", "handlers")
        for path in (root / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def _run(*command: str, cwd: Path) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout}\n{done.stderr}"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for folder in ("spec", "handlers", "generated"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    # The runtime library, as mypy would find it in an installed project.
    (tmp_path / "runtime").symlink_to(ROOT / "runtime", target_is_directory=True)
    return tmp_path


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_spec_change_regenerates_a_small_diff_that_lints(
    project: Path, change: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    edit, allowed = CHANGES[change]
    monkeypatch.chdir(project)  # paths as `make generate` gives them: the headers name them
    spec_path = Path("spec") / "cloudretail.yaml"
    spec = yaml.safe_load((project / spec_path).read_text())
    edit(spec)
    (project / spec_path).write_text(yaml.safe_dump(spec, sort_keys=False))
    before = _snapshot(project)
    generate(spec_path, Path("generated"), handlers_dir=Path("handlers"))
    after = _snapshot(project)
    changed = sorted(
        name for name in before.keys() | after.keys() if before.get(name) != after.get(name)
    )
    assert changed, "the change changed nothing"
    stray = [
        name
        for name in changed
        if not any(fnmatch.fnmatch(name, pattern) for pattern in allowed)
        and name != "generated/.cloudretail-manifest"
    ]
    assert not stray, f"files outside what a {change} change should touch: {stray}"
    python = [name for name in changed if name.endswith(".py") and name in after]
    if python:
        _run(str(BIN / "ruff"), "check", *python, cwd=project)
        _run(str(BIN / "ruff"), "format", "--check", *python, cwd=project)
        _run(
            str(BIN / "mypy"),
            "--cache-dir",
            str(project.parent / "mypy-cache"),
            *python,
            cwd=project,
        )
