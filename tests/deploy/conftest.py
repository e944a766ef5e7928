"""Fixtures of the deployment tests: the generated manifests, the tools that check them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import services_required

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "generated"
K8S = GENERATED / "k8s"
BASE = K8S / "base"
OVERLAYS = ("dev", "prod")

Manifest = dict[str, Any]


def missing_tool(reason: str) -> None:
    """A tool the test needs is not installed: skip, or fail in CI (CLOUDRETAIL_REQUIRE_SERVICES=1)."""
    if services_required():
        pytest.fail(f"{reason} (CLOUDRETAIL_REQUIRE_SERVICES=1: a missing tool is a failure)")
    pytest.skip(reason)


def tool(name: str, install: str) -> str:
    """The path of a command-line tool: the project's venv, then the tools venv (`make
    tools`: checkov pins packaging<24, which pytest cannot share), then PATH."""
    places = (
        Path(sys.executable).parent,
        Path(__file__).resolve().parents[2] / ".venv-tools" / "bin",
    )
    beside = next((place / name for place in places if (place / name).exists()), None)
    found = str(beside) if beside is not None else shutil.which(name)
    if found is None:
        missing_tool(f"{name} is not installed ({install})")
    assert found is not None
    return found


def load_documents(text: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def base_manifests() -> dict[str, Manifest]:
    """Every resource file of the kustomize base, by path relative to generated/k8s/base."""
    found = {}
    for path in sorted(BASE.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs = load_documents(path.read_text())
        assert len(docs) == 1, f"{path}: one resource per file"
        found[path.relative_to(BASE).as_posix()] = docs[0]
    return found


def by_kind(manifests: dict[str, Manifest], kind: str) -> dict[str, Manifest]:
    return {m["metadata"]["name"]: m for m in manifests.values() if m["kind"] == kind}


@pytest.fixture(scope="session")
def manifests() -> dict[str, Manifest]:
    return base_manifests()


@pytest.fixture(scope="session")
def kustomize_builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`kubectl kustomize` of each overlay, written to a file: {overlay: path}."""
    kubectl = tool("kubectl", "https://kubernetes.io/docs/tasks/tools/")
    out = tmp_path_factory.mktemp("kustomize")
    builds = {}
    for overlay in OVERLAYS:
        result = subprocess.run(
            [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"kubectl kustomize overlays/{overlay}:\n{result.stderr}"
        path = out / f"{overlay}.yaml"
        path.write_text(result.stdout)
        builds[overlay] = path
    return builds
