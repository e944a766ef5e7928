"""Tokens die with the credentials they were issued for: a password change, two-factor being
turned on or the account's erasure voids every earlier token, at the user service at once
(within its one-second refresh) and, through the published list, everywhere else."""

from __future__ import annotations

import asyncio
import time

import httpx
import pyotp
from cloudretail.runtime.auth import RevocationList, TokenVerifier, static_jwks

from tests.services.conftest import service_client
from tests.services.test_identity import PASSWORD, bearer, isolated_keys, person, unique_email

__all__ = ["isolated_keys"]  # the autouse fixture: keys and admin settings per test

FEED = "/api/users/.well-known/revocations.json"
REFRESH = 1.1  # the user service re-reads its revocations at most every second


async def test_a_password_change_voids_earlier_tokens(database_url: str) -> None:
    async with service_client("user", database_url, None) as client:
        email = unique_email()
        assert (await client.post("/api/users/register", json=person(email))).status_code == 201
        old = await bearer(client, email)
        assert (await client.get("/api/users/profile", headers=old)).status_code == 200
        assert (await client.get(FEED)).json() == {"revoked": []}
        changed = await client.patch(
            "/api/users/profile",
            json={"password": "a new passphrase 2", "current_password": PASSWORD},
            headers=old,
        )
        assert changed.status_code == 200, changed.text
        await asyncio.sleep(REFRESH)
        refused = await client.get("/api/users/profile", headers=old)
        assert refused.status_code == 401, refused.text
        assert refused.json()["detail"] == "the token has been revoked"
        new = await bearer(client, email, password="a new passphrase 2")
        assert (await client.get("/api/users/profile", headers=new)).status_code == 200
        listed = (await client.get(FEED)).json()["revoked"]
        assert [item["sub"] for item in listed] == [
            (await client.get("/api/users/profile", headers=new)).json()["id"]
        ]
        assert listed[0]["not_before"] <= time.time()


async def test_turning_on_two_factor_voids_earlier_tokens(database_url: str) -> None:
    async with service_client("user", database_url, None) as client:
        email = unique_email()
        await client.post("/api/users/register", json=person(email))
        old = await bearer(client, email)
        secret = (await client.post("/api/users/2fa/setup", headers=old)).json()["secret"]
        enabled = await client.post(
            "/api/users/2fa/enable", json={"code": pyotp.TOTP(secret).now()}, headers=old
        )
        assert enabled.status_code == 200, enabled.text
        await asyncio.sleep(REFRESH)
        assert (await client.get("/api/users/profile", headers=old)).status_code == 401


async def test_an_erased_account_s_token_is_refused_by_other_services(
    database_url: str,
) -> None:
    async with service_client("user", database_url, None) as users:
        email = unique_email()
        await users.post("/api/users/register", json=person(email))
        token = await bearer(users, email)
        issuer = users.app.state.token_issuer  # type: ignore[attr-defined]

        async def feed() -> dict[str, float]:
            # Another service's view: the published list, over HTTP (here in process).
            transport = httpx.ASGITransport(app=users.app)  # type: ignore[attr-defined]
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                response = await c.get(FEED)
            return {i["sub"]: i["not_before"] for i in response.json()["revoked"]}

        elsewhere = TokenVerifier(
            static_jwks(issuer.jwks()),
            issuer=issuer.issuer,
            audience=issuer.audience,
            revocations=RevocationList(feed, interval=0.0),
        )
        raw = token["Authorization"].removeprefix("Bearer ")
        assert (await elsewhere.verify(raw)).role == "customer"
        erased = await users.delete("/api/users/profile", headers=token)
        assert erased.status_code == 200, erased.text
        try:
            await elsewhere.verify(raw)
        except Exception as refused:
            assert getattr(refused, "status", None) == 401
        else:
            raise AssertionError("the erased account's token still passed")
