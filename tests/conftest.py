from __future__ import annotations

import base64
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """The generator's cache (generator/cache.py) starts empty for every test run and stays
    out of the developer's own; subprocesses inherit it through the environment."""
    # The key ring of encrypted columns (spec: `encrypted: true`) the services under test
    # run with; tests of the ring itself set or clear it (tests/runtime/conftest.py).
    os.environ.setdefault("ENCRYPTION_KEYS", "test:" + base64.b64encode(b"t" * 32).decode())
    if "CLOUDRETAIL_CACHE_DIR" not in os.environ:
        folder = tempfile.mkdtemp(prefix="cloudretail-test-cache-")
        os.environ["CLOUDRETAIL_CACHE_DIR"] = folder
        config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))
    # The store of project templates `init` and `upgrade` record (generator/upgrade.py).
    if "CLOUDRETAIL_TEMPLATE_STORE" not in os.environ:
        store = tempfile.mkdtemp(prefix="cloudretail-test-templates-")
        os.environ["CLOUDRETAIL_TEMPLATE_STORE"] = store
        config.add_cleanup(lambda: shutil.rmtree(store, ignore_errors=True))


@pytest.fixture
def in_root(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from the checkout's root, as a user does, so paths in output are relative."""
    monkeypatch.chdir(ROOT)
    return ROOT


def services_required() -> bool:
    """CI sets CLOUDRETAIL_REQUIRE_SERVICES=1: there a missing server fails instead of skipping."""
    return os.environ.get("CLOUDRETAIL_REQUIRE_SERVICES") == "1"
