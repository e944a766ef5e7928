"""Authentication at the gateway: route rules, 401 vs 403, and tokens built to get in."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx
import jwt
import pytest
from cloudretail.runtime.auth import TokenIssuer, generate_private_key_pem
from cryptography.hazmat.primitives import serialization

from tests.gateway.conftest import CUSTOMER_ID, Keys, Platform, problem


async def test_public_route_needs_nothing(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/products")
    assert response.status_code == 200
    assert "authorization" not in response.json()["headers"]


async def test_authenticated_route_without_token_is_401_with_challenge(
    platform: Platform, client: httpx.AsyncClient
) -> None:
    response = await client.get("/api/orders")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Bearer realm="cloudretail"')
    problem(response)
    assert platform.states["order"].requests == []


async def test_authenticated_route_accepts_any_role(client: httpx.AsyncClient, keys: Keys) -> None:
    for role in ("customer", "vendor", "admin"):
        response = await client.get("/api/orders", headers=keys.bearer(role))
        assert response.status_code == 200, role


async def test_admin_route_customer_gets_403_anonymous_401_admin_passes(
    platform: Platform, client: httpx.AsyncClient, keys: Keys
) -> None:
    customer = await client.delete("/api/products/1", headers=keys.bearer("customer"))
    assert customer.status_code == 403
    assert "www-authenticate" not in customer.headers
    problem(customer)
    anonymous = await client.delete("/api/products/1")
    assert anonymous.status_code == 401
    assert platform.states["product"].requests == []
    admin = await client.delete("/api/products/1", headers=keys.bearer("admin"))
    assert admin.status_code == 200
    assert admin.json()["service"] == "product"


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "sub": CUSTOMER_ID,
        "role": "customer",
        "iss": "cloudretail",
        "aud": "cloudretail",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return {key: value for key, value in claims.items() if value is not None}


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _attack(keys: Keys, kind: str) -> str:
    private = keys.issuer._key  # the real signing key, for claim-level attacks
    headers = {"kid": keys.issuer.kid}
    now = int(time.time())
    if kind == "expired":
        return jwt.encode(
            _claims(iat=now - 7200, nbf=now - 7200, exp=now - 3600), private, "RS256", headers
        )
    if kind == "not yet valid":
        return jwt.encode(_claims(nbf=now + 3600, exp=now + 7200), private, "RS256", headers)
    if kind == "wrong issuer":
        return jwt.encode(_claims(iss="someone-else"), private, "RS256", headers)
    if kind == "wrong audience":
        return jwt.encode(_claims(aud="another-api"), private, "RS256", headers)
    if kind == "no expiry":
        return jwt.encode(_claims(exp=None), private, "RS256", headers)
    if kind == "unknown role":
        return jwt.encode(_claims(role="root"), private, "RS256", headers)
    if kind == "bad signature":
        other = TokenIssuer(
            generate_private_key_pem(), issuer="cloudretail", audience="cloudretail"
        )
        # Signed by another key but claiming the real key's kid.
        return jwt.encode(_claims(), other._key, "RS256", headers)
    if kind == "tampered payload":
        token = keys.token("customer")
        head, _, signature = token.split(".")
        return f"{head}.{_b64(_claims(role='admin'))}.{signature}"
    if kind == "alg none":
        return f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': keys.issuer.kid})}.{_b64(_claims(role='admin'))}."
    if kind == "hs256 with the public key":
        public_pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        header = _b64({"alg": "HS256", "typ": "JWT", "kid": keys.issuer.kid})
        payload = _b64(_claims(role="admin"))
        import hashlib
        import hmac

        mac = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    if kind == "garbage":
        return "not.a.token"
    raise AssertionError(kind)


ATTACKS = [
    "expired",
    "not yet valid",
    "wrong issuer",
    "wrong audience",
    "no expiry",
    "unknown role",
    "bad signature",
    "tampered payload",
    "alg none",
    "hs256 with the public key",
    "garbage",
]


@pytest.mark.parametrize("kind", ATTACKS)
async def test_forged_and_invalid_tokens_are_refused(
    platform: Platform, client: httpx.AsyncClient, keys: Keys, kind: str
) -> None:
    token = _attack(keys, kind)
    for method, path in (("GET", "/api/orders"), ("GET", "/api/users")):
        response = await client.request(method, path, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, (kind, response.text)
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
        problem(response)
    assert platform.states["order"].requests == []
    assert platform.states["user"].requests == []


async def test_a_non_bearer_scheme_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/orders", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert response.status_code == 401
    assert 'error="invalid_request"' in response.headers["www-authenticate"]


async def test_refused_token_on_a_public_route_passes_through_unauthenticated(
    platform: Platform, client: httpx.AsyncClient, keys: Keys
) -> None:
    token = _attack(keys, "expired")
    response = await client.get("/api/products", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    # The service gets the header as sent and makes its own decision.
    assert response.json()["headers"]["authorization"] == f"Bearer {token}"


async def test_unknown_kid_refetches_the_jwks(
    platform: Platform, client: httpx.AsyncClient, keys: Keys
) -> None:
    assert (await client.get("/api/orders", headers=keys.bearer())).status_code == 200
    assert platform.fetcher is not None
    fetched = platform.fetcher.calls
    assert fetched == 1
    # The user service rotates to a new key and publishes both.
    rotated = TokenIssuer(generate_private_key_pem(), issuer="cloudretail", audience="cloudretail")
    old_keys = keys.issuer.jwks()["keys"]
    platform.states["user"].jwks = {"keys": [*old_keys, *rotated.jwks()["keys"]]}
    token = rotated.issue(CUSTOMER_ID, "customer")
    response = await client.get("/api/orders", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert platform.fetcher.calls == fetched + 1
    # Verified tokens are cached: asking again costs no fetch and no verification.
    for _ in range(3):
        await client.get("/api/orders", headers={"Authorization": f"Bearer {token}"})
    assert platform.fetcher.calls == fetched + 1


async def test_key_server_down_is_503_for_protected_routes_only(keys: Keys) -> None:
    from tests.gateway.conftest import running

    async with running(keys) as platform, platform.client() as client:
        await platform.upstreams["user"].stop()
        protected = await client.get("/api/orders", headers=keys.bearer())
        assert protected.status_code == 503
        problem(protected)
        public = await client.get("/api/products", headers=keys.bearer())
        assert public.status_code == 200
