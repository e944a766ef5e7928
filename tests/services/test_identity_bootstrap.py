"""The bootstrap admin: made with the operator's password, never by promoting an account."""

from __future__ import annotations

import logging

import pytest

from tests.services.conftest import service_client
from tests.services.test_identity import PASSWORD, bearer, login, person

OPERATOR_PASSWORD = "operator's long password"


@pytest.fixture(autouse=True)
def isolated_keys(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CLOUDRETAIL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CLOUDRETAIL_ADMIN_EMAIL", raising=False)
    monkeypatch.delenv("CLOUDRETAIL_ADMIN_PASSWORD", raising=False)


async def test_an_account_registered_first_with_the_admin_email_is_not_promoted(
    database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with service_client("user", database_url, None) as client:
        squatted = await client.post("/api/users/register", json=person("Boss@Example.com"))
        assert squatted.status_code == 201, squatted.text
    monkeypatch.setenv("CLOUDRETAIL_ADMIN_EMAIL", "boss@example.com")
    monkeypatch.setenv("CLOUDRETAIL_ADMIN_PASSWORD", OPERATOR_PASSWORD)
    with caplog.at_level(logging.INFO, logger="handlers.user"):
        async with service_client("user", database_url, None) as client:
            squatter = await bearer(client, "boss@example.com")
            profile = (await client.get("/api/users/profile", headers=squatter)).json()
            assert profile["role"] == "customer"
            listing = await client.get("/api/users", headers=squatter)
            assert listing.status_code == 403
            # The operator's password does not open the account either: it was left alone.
            assert (await login(client, "boss@example.com", OPERATOR_PASSWORD)).status_code == 401
    refusals = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert refusals, [r.getMessage() for r in caplog.records]
    assert "CLOUDRETAIL_ADMIN_EMAIL" in refusals[0].getMessage()
    assert not [r for r in caplog.records if "promoted" in r.getMessage()]


async def test_an_existing_admin_keeps_its_password(
    database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CLOUDRETAIL_ADMIN_EMAIL", "boss@example.com")
    monkeypatch.setenv("CLOUDRETAIL_ADMIN_PASSWORD", OPERATOR_PASSWORD)
    async with service_client("user", database_url, None) as client:
        admin = await bearer(client, "boss@example.com", password=OPERATOR_PASSWORD)
        changed = await client.patch(
            "/api/users/profile",
            json={"password": PASSWORD, "current_password": OPERATOR_PASSWORD},
            headers=admin,
        )
        assert changed.status_code == 200, changed.text
    # A restart with the old password in the environment neither resets nor breaks it.
    with caplog.at_level(logging.INFO, logger="handlers.user"):
        async with service_client("user", database_url, None) as client:
            admin = await bearer(client, "boss@example.com", password=PASSWORD)
            profile = (await client.get("/api/users/profile", headers=admin)).json()
            assert profile["role"] == "admin"
            assert (await login(client, "boss@example.com", OPERATOR_PASSWORD)).status_code == 401
    assert [r for r in caplog.records if r.levelno == logging.WARNING and "admin" in r.getMessage()]
