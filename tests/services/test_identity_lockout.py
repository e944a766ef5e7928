"""Login lockout: counted atomically, per (account, client), bounded per account, fail-closed.

Each test runs on SQLite with the in-process cache and on PostgreSQL with a real Redis.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

import handlers.user as identity
from tests.services.conftest import service_client
from tests.services.test_identity import (
    BACKEND_IDS,
    BACKENDS,
    DEAD_REDIS_URL,
    PASSWORD,
    backend_urls,
    from_address,
    login,
    person,
    unique_email,
)

CLIENT_LIMIT = identity.CLIENT_POLICY.limit
ACCOUNT_LIMIT = identity.ACCOUNT_POLICY.limit


@pytest.fixture(autouse=True)
def isolated_keys(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CLOUDRETAIL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CLOUDRETAIL_ADMIN_EMAIL", raising=False)
    monkeypatch.delenv("CLOUDRETAIL_ADMIN_PASSWORD", raising=False)


@pytest.fixture(params=BACKENDS, ids=BACKEND_IDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str | None]]:
    yield from backend_urls(request.param, tmp_path)


def assert_locked(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) > 0


async def test_concurrent_wrong_guesses_are_counted_atomically(
    backend: tuple[str, str | None],
) -> None:
    database_url, redis_url = backend
    email = unique_email()
    async with service_client("user", database_url, None, redis_url=redis_url) as client:
        assert (await client.post("/api/users/register", json=person(email))).status_code == 201
        answers = await asyncio.gather(
            *(login(client, email, f"wrong password {n}") for n in range(30))
        )
        statuses = Counter(answer.status_code for answer in answers)
        # Exactly the allowance was checked against the hash; the rest were refused before.
        assert statuses == {401: CLIENT_LIMIT, 429: 30 - CLIENT_LIMIT}, statuses
        # The counter saw every failure: even the right password waits now.
        assert_locked(await login(client, email))


async def test_a_right_password_among_concurrent_guesses_gets_no_extra_tries(
    backend: tuple[str, str | None],
) -> None:
    database_url, redis_url = backend
    email = unique_email()
    async with service_client("user", database_url, None, redis_url=redis_url) as client:
        await client.post("/api/users/register", json=person(email))
        guesses = [login(client, email, f"wrong password {n}") for n in range(29)]
        guesses.insert(15, login(client, email))
        answers = await asyncio.gather(*guesses)
        statuses = Counter(answer.status_code for answer in answers)
        checked = statuses[401] + statuses[200]
        assert checked <= CLIENT_LIMIT, statuses
        assert statuses[429] >= 30 - CLIENT_LIMIT, statuses
        assert set(statuses) <= {200, 401, 429}, statuses


async def test_a_locked_out_attacker_does_not_lock_out_the_owner(
    backend: tuple[str, str | None],
) -> None:
    database_url, redis_url = backend
    email = unique_email()
    async with service_client("user", database_url, None, redis_url=redis_url) as owner:
        await owner.post("/api/users/register", json=person(email))
        async with from_address(owner, "203.0.113.66") as attacker:
            for _ in range(CLIENT_LIMIT):
                wrong = await login(attacker, email, "wrong password")
                assert wrong.status_code == 401, wrong.text
            assert_locked(await login(attacker, email, "wrong password"))
            assert_locked(await login(attacker, email))  # even with the right one, from there
            # Hammering on while locked out checks nothing, so it counts toward nothing.
            for _ in range(ACCOUNT_LIMIT * 2):
                assert_locked(await login(attacker, email, "wrong password"))
        # The owner, at another address (never seen before), was never a suspect.
        async with from_address(owner, "192.0.2.44") as new_device:
            assert (await login(new_device, email)).status_code == 200
        assert (await login(owner, email)).status_code == 200


async def test_locks_grow_with_each_lock(
    backend: tuple[str, str | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real policy locks for 15 minutes and up; the same curve, in fractions of a second.
    policy = identity.LockPolicy("client", limit=2, window=30, lock=0.5, max_lock=60)
    monkeypatch.setattr(identity, "CLIENT_POLICY", policy)
    database_url, redis_url = backend
    email = unique_email()
    async with service_client("user", database_url, None, redis_url=redis_url) as client:
        await client.post("/api/users/register", json=person(email))
        for lock in (0.5, 1.0, 2.0):
            for _ in range(policy.limit):
                assert (await login(client, email, "wrong password")).status_code == 401
            started = asyncio.get_running_loop().time()
            assert_locked(await login(client, email))
            await asyncio.sleep(lock * 0.5)
            assert_locked(await login(client, email))  # still locked past the earlier length
            await asyncio.sleep(started + lock + 0.1 - asyncio.get_running_loop().time())
        # After the third lock ends, the right password gets in and clears the count.
        assert (await login(client, email)).status_code == 200


async def test_many_clients_are_bounded_by_the_account_ceiling(
    backend: tuple[str, str | None],
) -> None:
    database_url, redis_url = backend
    email = unique_email()
    async with service_client("user", database_url, None, redis_url=redis_url) as owner:
        await owner.post("/api/users/register", json=person(email))
        # The owner has logged in from here before the attack: a known client.
        assert (await login(owner, email)).status_code == 200
        per_client = CLIENT_LIMIT - 1
        botnet = [f"198.51.100.{n}" for n in range(1, ACCOUNT_LIMIT // per_client + 1)]
        for address in botnet:
            async with from_address(owner, address) as bot:
                for _ in range(per_client):
                    wrong = await login(bot, email, "wrong password")
                    assert wrong.status_code == 401, (address, wrong.text)
        # ACCOUNT_LIMIT failures from many clients: a new client is refused before hashing,
        # whatever it sends.
        async with from_address(owner, "198.51.100.200") as newcomer:
            assert_locked(await login(newcomer, email, "wrong password"))
            assert_locked(await login(newcomer, email))
        # The owner's known client still gets in.
        assert (await login(owner, email)).status_code == 200


async def test_forwarded_for_counts_only_from_a_trusted_proxy(
    backend: tuple[str, str | None],
) -> None:
    """The client is the address uvicorn gives the app: X-Forwarded-For only from a trusted
    proxy (FORWARDED_ALLOW_IPS, default 127.0.0.1, where the local gateway runs)."""
    database_url, redis_url = backend
    email = unique_email()
    async with service_client("user", database_url, None, redis_url=redis_url) as client:
        await client.post("/api/users/register", json=person(email))
        proxied = ProxyHeadersMiddleware(client.app, trusted_hosts="127.0.0.1")  # type: ignore[attr-defined]

        def caller(peer: str) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=proxied, client=(peer, 40000))
            return httpx.AsyncClient(transport=transport, base_url="http://test")

        async with caller("203.0.113.9") as untrusted, caller("127.0.0.1") as gateway:
            # A new X-Forwarded-For per guess does not make an untrusted peer a new client.
            for n in range(CLIENT_LIMIT):
                spoofed = {"X-Forwarded-For": f"192.0.2.{n}"}
                wrong = await untrusted.post(
                    "/api/users/login",
                    json={"email": email, "password": "wrong password"},
                    headers=spoofed,
                )
                assert wrong.status_code == 401, wrong.text
            assert_locked(
                await untrusted.post(
                    "/api/users/login",
                    json={"email": email, "password": PASSWORD},
                    headers={"X-Forwarded-For": "192.0.2.200"},
                )
            )
            # Through the trusted gateway, the forwarded address is the client: the owner
            # at 198.51.100.7 is not the locked-out 203.0.113.9.
            owner = await gateway.post(
                "/api/users/login",
                json={"email": email, "password": PASSWORD},
                headers={"X-Forwarded-For": "198.51.100.7"},
            )
            assert owner.status_code == 200, owner.text
            # ... and the gateway relaying the attacker's address keeps it locked out.
            assert_locked(
                await gateway.post(
                    "/api/users/login",
                    json={"email": email, "password": PASSWORD},
                    headers={"X-Forwarded-For": "203.0.113.9"},
                )
            )


async def test_login_fails_closed_when_the_counter_store_is_down(database_url: str) -> None:
    email = unique_email()
    async with service_client("user", database_url, None, redis_url=DEAD_REDIS_URL) as client:
        made = await client.post("/api/users/register", json=person(email))
        assert made.status_code == 201, made.text
        for password in ["wrong password"] * (CLIENT_LIMIT + 3) + [PASSWORD]:
            answer = await login(client, email, password)
            assert answer.status_code == 503, answer.text
            assert answer.headers["content-type"] == "application/problem+json"
            assert int(answer.headers["retry-after"]) > 0
            assert "try again" in answer.json()["detail"]
