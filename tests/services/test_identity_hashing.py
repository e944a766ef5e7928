"""argon2 is bounded: at most one hash per core at a time, and a short queue, shed beyond."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher

import handlers.user as identity
from tests.services.conftest import service_client
from tests.services.test_identity import from_address, login, person, unique_email


@pytest.fixture(autouse=True)
def isolated_keys(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CLOUDRETAIL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CLOUDRETAIL_ADMIN_EMAIL", raising=False)
    monkeypatch.delenv("CLOUDRETAIL_ADMIN_PASSWORD", raising=False)


class CountingHasher(PasswordHasher):
    """The real argon2 hasher, noting how many of its calls run at the same time."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.running = 0
        self.most = 0

    def _enter(self) -> None:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)

    def _leave(self) -> None:
        with self._lock:
            self.running -= 1

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self._enter()
        try:
            return super().verify(hash, password)
        finally:
            self._leave()

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        self._enter()
        try:
            return super().hash(password, salt=salt)
        finally:
            self._leave()


async def test_a_flood_of_logins_is_shed_and_a_real_login_stays_fast(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cores = len(os.sched_getaffinity(0))
    hasher = CountingHasher()
    monkeypatch.setattr(identity, "_hasher", hasher)
    email = unique_email()
    async with service_client("user", database_url, None) as client:
        assert (await client.post("/api/users/register", json=person(email))).status_code == 201

        async def flood(n: int) -> httpx.Response:
            # Distinct accounts and clients, so no lockout gets in the way of the hashing.
            async with from_address(client, f"10.0.{n // 250}.{n % 250 + 1}") as bot:
                return await login(bot, f"nobody-{n}@example.com", "wrong password")

        async def real_login() -> tuple[float, httpx.Response]:
            await asyncio.sleep(0.2)  # once the flood is under way
            started = time.perf_counter()
            answer = await login(client, email)
            return time.perf_counter() - started, answer

        *flooded, (elapsed, real) = await asyncio.gather(
            *(flood(n) for n in range(200)), real_login()
        )
        statuses: dict[int, int] = {}
        for answer in flooded:
            statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
        assert hasher.most <= cores, (hasher.most, cores)
        assert set(statuses) == {401, 503}, statuses
        shed: Any = next(a for a in flooded if a.status_code == 503)
        assert shed.headers["content-type"] == "application/problem+json"
        assert int(shed.headers["retry-after"]) > 0
        # The real login was answered quickly: let in, or told at once to come back.
        assert elapsed < 3.0, (elapsed, real.status_code)
        assert real.status_code in (200, 503), real.text
        # With the flood gone it gets straight in.
        assert (await login(client, email)).status_code == 200
