"""A TOTP code is good once: a replay within its window is refused, at login and at enable."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyotp
import pytest
import sqlalchemy as sa
from cloudretail.runtime.crypto import KeyRing

from tests.services.conftest import service_client
from tests.services.test_identity import (
    BACKEND_IDS,
    BACKENDS,
    backend_urls,
    bearer,
    login,
    person,
    unique_email,
)


@pytest.fixture(autouse=True)
def isolated_keys(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CLOUDRETAIL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CLOUDRETAIL_ADMIN_EMAIL", raising=False)
    monkeypatch.delenv("CLOUDRETAIL_ADMIN_PASSWORD", raising=False)


@pytest.fixture(params=BACKENDS, ids=BACKEND_IDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str | None]]:
    yield from backend_urls(request.param, tmp_path)


def step_code(totp: pyotp.TOTP, steps_ahead: int) -> str:
    """The code of a neighbouring time step; the service accepts one step either side."""
    return totp.at(time.time() + steps_ahead * totp.interval)


async def with_two_factor(
    client: httpx.AsyncClient, email: str
) -> tuple[pyotp.TOTP, dict[str, str], str]:
    await client.post("/api/users/register", json=person(email))
    headers = await bearer(client, email)
    setup = (await client.post("/api/users/2fa/setup", headers=headers)).json()
    totp = pyotp.TOTP(setup["secret"])
    code = step_code(totp, -1)
    enabled = await client.post("/api/users/2fa/enable", json={"code": code}, headers=headers)
    assert enabled.status_code == 200, enabled.text
    return totp, headers, code


async def test_a_login_code_cannot_be_replayed(backend: tuple[str, str | None]) -> None:
    database_url, redis_url = backend
    email = unique_email()
    async with service_client("user", database_url, None, redis_url=redis_url) as client:
        totp, _, _ = await with_two_factor(client, email)
        code = step_code(totp, 0)
        first = await login(client, email, totp_code=code)
        assert first.status_code == 200, first.text
        replayed = await login(client, email, totp_code=code)
        assert replayed.status_code == 401, replayed.text
        assert replayed.headers["content-type"] == "application/problem+json"
        # A code of a later step is a new code.
        assert (await login(client, email, totp_code=step_code(totp, 1))).status_code == 200


async def test_the_enable_code_cannot_be_replayed(backend: tuple[str, str | None]) -> None:
    database_url, redis_url = backend
    email = unique_email()
    async with service_client("user", database_url, None, redis_url=redis_url) as client:
        totp, headers, enable_code = await with_two_factor(client, email)
        # The code that turned 2FA on does not log in ...
        assert (await login(client, email, totp_code=enable_code)).status_code == 401
        # ... nor enable again.
        again = await client.post(
            "/api/users/2fa/enable", json={"code": enable_code}, headers=headers
        )
        assert again.status_code == 422, again.text
        assert (await login(client, email, totp_code=step_code(totp, 0))).status_code == 200


async def test_enable_fails_closed_when_the_replay_store_is_down(database_url: str) -> None:
    email = unique_email()
    async with service_client("user", database_url, None) as client:
        await client.post("/api/users/register", json=person(email))
        headers = await bearer(client, email)
        setup = (await client.post("/api/users/2fa/setup", headers=headers)).json()
    async with service_client(
        "user", database_url, None, redis_url="redis://127.0.0.1:1/0"
    ) as client:
        code = pyotp.TOTP(setup["secret"]).now()
        refused = await client.post("/api/users/2fa/enable", json={"code": code}, headers=headers)
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["retry-after"]) > 0
        assert refused.headers["content-type"] == "application/problem+json"


async def test_the_database_holds_the_two_factor_secret_encrypted(
    backend: tuple[str, str | None],
) -> None:
    """Spec `encrypted: true`: the raw row holds AES-256-GCM ciphertext under the ring's
    first key, never the secret; the service still verifies codes with it."""
    database_url, redis_url = backend
    email = unique_email()
    async with service_client("user", database_url, None, redis_url=redis_url) as client:
        totp, _, _ = await with_two_factor(client, email)
        async with client.app.state.database.session() as session:  # type: ignore[attr-defined]
            raw = (
                await session.execute(
                    sa.text("SELECT two_factor_secret FROM users WHERE email = :email"),
                    {"email": email},
                )
            ).scalar_one()
        assert (await login(client, email, totp_code=step_code(totp, 0))).status_code == 200
    ring = KeyRing.parse(os.environ["ENCRYPTION_KEYS"])
    assert raw.startswith(f"enc:v1:{ring.active}:")
    assert totp.secret not in raw and totp.secret.lower() not in raw.lower()
    assert ring.decrypt(raw, "users.two_factor_secret") == totp.secret
