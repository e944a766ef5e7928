"""The secrets `up` keeps between runs, and the defaults named for the platform."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cloudretail.runtime.stack import stack_secrets


def test_admin_address_is_named_for_the_platform(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLOUDRETAIL_ADMIN_EMAIL", raising=False)
    monkeypatch.delenv("CLOUDRETAIL_ADMIN_PASSWORD", raising=False)
    kept = stack_secrets(tmp_path, "library")
    assert kept["admin_email"] == "admin@library.example"
    assert kept["admin_password_generated"] == "1"
    # Made once, kept with owner-only permissions, and the same on the next run.
    assert stat.S_IMODE((tmp_path / "secrets.json").stat().st_mode) == 0o600
    assert stack_secrets(tmp_path, "library") == kept


def test_the_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDRETAIL_ADMIN_EMAIL", "boss@example.com")
    monkeypatch.setenv("CLOUDRETAIL_ADMIN_PASSWORD", "a long admin passphrase")
    kept = stack_secrets(tmp_path, "library")
    assert (kept["admin_email"], kept["admin_password"]) == (
        "boss@example.com",
        "a long admin passphrase",
    )
    assert kept["admin_password_generated"] == ""
