"""Token revocation as verifiers see it: the issuer's list of subjects and cut-off times."""

from __future__ import annotations

import time
from collections.abc import Mapping

import pytest
from cloudretail.runtime.auth import (
    RevocationList,
    TokenIssuer,
    TokenVerifier,
    generate_private_key_pem,
    static_jwks,
)
from cloudretail.runtime.errors import Problem
from cloudretail.runtime.gateway.authn import CachingVerifier

SUBJECT = "00000000-0000-4000-8000-000000000007"
OTHER = "00000000-0000-4000-8000-000000000008"


class Feed:
    def __init__(self) -> None:
        self.entries: dict[str, float] = {}
        self.calls = 0
        self.down = False

    async def __call__(self) -> Mapping[str, float]:
        self.calls += 1
        if self.down:
            raise ConnectionError("the issuer is down")
        return dict(self.entries)


@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    return TokenIssuer(generate_private_key_pem(), issuer="cloudretail", audience="cloudretail")


def verifier(issuer: TokenIssuer, feed: Feed, interval: float = 0.0) -> TokenVerifier:
    return TokenVerifier(
        static_jwks(issuer.jwks()),
        issuer="cloudretail",
        audience="cloudretail",
        revocations=RevocationList(feed, interval=interval),
    )


async def test_a_token_issued_before_the_cutoff_is_refused(issuer: TokenIssuer) -> None:
    feed = Feed()
    check = verifier(issuer, feed)
    before = issuer.issue(SUBJECT, "customer")
    other = issuer.issue(OTHER, "customer")
    assert (await check.verify(before)).subject == SUBJECT
    feed.entries[SUBJECT] = time.time()
    with pytest.raises(Problem) as refused:
        await check.verify(before)
    assert refused.value.status == 401
    assert refused.value.detail == "the token has been revoked"
    # Another subject, and a token issued after the cutoff (a new login), still pass.
    assert (await check.verify(other)).subject == OTHER
    time.sleep(0.002)
    after = issuer.issue(SUBJECT, "customer")
    assert (await check.verify(after)).subject == SUBJECT


async def test_the_list_is_fetched_at_most_once_per_interval(issuer: TokenIssuer) -> None:
    feed = Feed()
    check = verifier(issuer, feed, interval=60.0)
    token = issuer.issue(SUBJECT, "customer")
    for _ in range(5):
        await check.verify(token)
    assert feed.calls == 1


async def test_an_unreachable_issuer_keeps_the_last_list(issuer: TokenIssuer) -> None:
    feed = Feed()
    check = verifier(issuer, feed)
    token = issuer.issue(SUBJECT, "customer")
    feed.entries[SUBJECT] = time.time() + 1
    with pytest.raises(Problem):
        await check.verify(token)
    feed.down = True
    with pytest.raises(Problem) as refused:
        await check.verify(token)
    assert refused.value.status == 401
    assert check.revocations is not None and check.revocations.failing
    # Tokens nobody revoked keep working while the issuer is away.
    assert (await check.verify(issuer.issue(OTHER, "customer"))).subject == OTHER


async def test_the_gateway_cache_does_not_outlive_a_revocation(issuer: TokenIssuer) -> None:
    feed = Feed()
    cached = CachingVerifier(verifier(issuer, feed))
    token = issuer.issue(SUBJECT, "customer")
    assert (await cached.verify(token)).subject == SUBJECT
    assert (await cached.verify(token)).subject == SUBJECT  # from the cache
    feed.entries[SUBJECT] = time.time()
    with pytest.raises(Problem) as refused:
        await cached.verify(token)
    assert refused.value.status == 401


async def test_a_token_role_must_be_one_the_platform_declares() -> None:
    from cloudretail.runtime.auth import (
        TokenIssuer,
        TokenVerifier,
        generate_private_key_pem,
        static_jwks,
    )
    from cloudretail.runtime.errors import Problem

    issuer = TokenIssuer(generate_private_key_pem(), issuer="p", audience="p")
    strict = TokenVerifier(
        static_jwks(issuer.jwks()), issuer="p", audience="p", roles=("member", "admin")
    )
    assert (await strict.verify(issuer.issue("u1", "member"))).role == "member"
    with pytest.raises(Problem) as refused:
        await strict.verify(issuer.issue("u1", "vendor"))
    assert refused.value.status == 401
    # Without declared roles any role is taken: the platform's own names, not a fixed list.
    loose = TokenVerifier(static_jwks(issuer.jwks()), issuer="p", audience="p")
    assert (await loose.verify(issuer.issue("u1", "gardener"))).role == "gardener"


async def test_fetching_the_lists_loads_the_ca_bundle_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every refresh used to build a new TLS context (tens of ms of CPU each, every 2 s in
    every process); the trust store is now loaded once per process."""
    import http.server
    import json
    import ssl
    import threading

    from cloudretail.runtime import auth
    from cloudretail.runtime.httpclient import system_trust

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"revoked": [{"sub": SUBJECT, "not_before": 5}], "keys": []})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    built = []
    real = ssl.create_default_context

    def counting(*args: object, **kwargs: object) -> ssl.SSLContext:
        built.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl, "create_default_context", counting)
    system_trust.cache_clear()  # a fresh process: nothing loaded yet
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
        revocations = auth.http_revocations_fetcher(auth.revocations_url_for(url))
        jwks = auth.http_jwks_fetcher(url)
        for _ in range(5):
            assert await revocations() == {SUBJECT: 5.0}
            assert (await jwks())["keys"] == []
    finally:
        server.shutdown()
    assert len(built) <= 1
