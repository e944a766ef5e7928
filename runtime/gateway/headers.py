"""Header policy at the edge: what crosses to the upstream, what comes back, what is added.

Everything here is precomputed bytes; the proxy path does set lookups and list extends.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# RFC 9110 section 7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

# Request headers the gateway sets itself (or refuses to pass on) instead of trusting the
# client's: Host and X-Forwarded-* describe this hop; the gateway reads the body itself,
# so Expect is answered here; the service token is for calls inside the platform only.
REQUEST_DROP = HOP_BY_HOP | {
    b"host",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-correlation-id",
    b"expect",
    b"x-service-token",
    b"content-length",
}

# Response headers replaced by the gateway's own: its security set must hold for every
# response whatever a service sends; uvicorn writes Date; Server tells attackers too much.
RESPONSE_DROP = HOP_BY_HOP | {
    b"date",
    b"server",
    b"x-powered-by",
    b"x-correlation-id",
    b"strict-transport-security",
    b"x-content-type-options",
    b"x-frame-options",
    b"referrer-policy",
    b"cross-origin-opener-policy",
    b"cross-origin-resource-policy",
    b"origin-agent-cluster",
    b"x-dns-prefetch-control",
    b"x-download-options",
    b"x-permitted-cross-domain-policies",
    b"x-xss-protection",
    b"access-control-allow-origin",
    b"access-control-allow-credentials",
    b"access-control-expose-headers",
    b"ratelimit-limit",
    b"ratelimit-remaining",
    b"ratelimit-reset",
}

# Helmet's defaults, the set the Express gateway this replaces sent.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"strict-transport-security", b"max-age=31536000; includeSubDomains"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"origin-agent-cluster", b"?1"),
    (b"x-dns-prefetch-control", b"off"),
    (b"x-download-options", b"noopen"),
    (b"x-permitted-cross-domain-policies", b"none"),
    # The legacy XSS auditor is itself exploitable; "0" turns it off, as Helmet does.
    (b"x-xss-protection", b"0"),
)
# A service's own policy wins for its content; without one, at least no framing.
PROXIED_CSP = (b"content-security-policy", b"frame-ancestors 'none'")
# What the gateway itself serves (errors, health, metrics, OpenAPI) is data, never a page
# that loads anything.
GATEWAY_CSP = (
    b"content-security-policy",
    b"default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
)
GATEWAY_HEADERS: tuple[tuple[bytes, bytes], ...] = (*SECURITY_HEADERS, GATEWAY_CSP)

# Headers a browser script may read on a cross-origin response.
_EXPOSED = b", ".join(
    [
        b"X-Correlation-ID",
        b"RateLimit-Limit",
        b"RateLimit-Remaining",
        b"RateLimit-Reset",
        b"Retry-After",
        b"Location",
    ]
)
_ALLOWED_REQUEST_HEADERS = b"Authorization, Content-Type, X-Correlation-ID, Idempotency-Key"
_PREFLIGHT_MAX_AGE = b"600"


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    origins: frozenset[bytes]

    @classmethod
    def of(cls, origins: Iterable[str]) -> CorsPolicy:
        return cls(frozenset(origin.rstrip("/").encode() for origin in origins))

    def allows(self, origin: bytes) -> bool:
        return origin in self.origins

    def response_headers(self, origin: bytes | None) -> list[tuple[bytes, bytes]]:
        """For a normal response: allow the origin if listed; always vary on Origin."""
        if origin is None:
            return []
        if origin not in self.origins:
            return [(b"vary", b"Origin")]
        return [
            (b"access-control-allow-origin", origin),
            (b"access-control-expose-headers", _EXPOSED),
            (b"vary", b"Origin"),
        ]

    def preflight_headers(self, origin: bytes, methods: Iterable[str]) -> list[tuple[bytes, bytes]]:
        allowed = ", ".join(sorted({*methods, "OPTIONS"})).encode()
        return [
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-methods", allowed),
            (b"access-control-allow-headers", _ALLOWED_REQUEST_HEADERS),
            (b"access-control-max-age", _PREFLIGHT_MAX_AGE),
            (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
        ]


def connection_tokens(value: bytes) -> frozenset[bytes]:
    """Header names a Connection header declares hop-by-hop for this message."""
    return frozenset(token.strip().lower() for token in value.split(b",") if token.strip())
