from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def in_root(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from the checkout's root, as a user does, so paths in output are relative."""
    monkeypatch.chdir(ROOT)
    return ROOT


def services_required() -> bool:
    """CI sets CLOUDRETAIL_REQUIRE_SERVICES=1: there a missing server fails instead of skipping."""
    return os.environ.get("CLOUDRETAIL_REQUIRE_SERVICES") == "1"
