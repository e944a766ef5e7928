"""The gateway's pure parts: route matching, config from env, breaker, GCRA, token cache."""

from __future__ import annotations

import pytest
from cloudretail.runtime.auth import Principal
from cloudretail.runtime.gateway.authn import CachingVerifier, authorize, bearer_token
from cloudretail.runtime.gateway.breaker import BreakerState, CircuitBreaker, answer_is_failure
from cloudretail.runtime.gateway.config import load_config
from cloudretail.runtime.gateway.ratelimit import LocalRateLimiter
from cloudretail.runtime.gateway.routing import Route, RouteTable

from tests.gateway.conftest import ROUTES


def table() -> RouteTable:
    config = load_config(ROUTES, env={})
    return RouteTable(Route.from_spec(spec) for spec in config.routes_file.routes)


def test_literal_segment_beats_parameter() -> None:
    routes = table()
    stream = routes.match("/api/events/stream")
    assert stream is not None and stream["GET"].template == "/api/events/stream"
    by_id = routes.match("/api/events/42")
    assert by_id is not None and by_id["GET"].template == "/api/events/{id}"
    export = routes.match("/api/users/profile/export")
    assert export is not None and export["GET"].template == "/api/users/profile/export"


def test_parameters_and_methods() -> None:
    routes = table()
    product = routes.match("/api/products/abc")
    assert product is not None
    assert set(product) == {"GET", "PUT", "PATCH", "DELETE"}
    cancel = routes.match("/api/orders/7/cancel")
    assert cancel is not None and cancel["POST"].upstream == "order"


@pytest.mark.parametrize(
    "path",
    [
        "/api/nothing",
        "/api/products/",
        "/api/products/1/extra",
        "/api/products/..",
        "/api/products/.",
        "/api//products",
        "/api/orders/../cancel",
        "/other",
        "",
    ],
)
def test_unknown_paths_match_nothing(path: str) -> None:
    assert table().match(path) is None


def test_admin_routes_need_the_admin_role() -> None:
    routes = table()
    delete = routes.match("/api/products/1")
    assert delete is not None and delete["DELETE"].roles == frozenset({"admin"})
    admin = Principal("a", "admin")
    customer = Principal("c", "customer")
    assert authorize(delete["DELETE"], admin, None) is None
    denial = authorize(delete["DELETE"], customer, None)
    assert denial is not None and denial.status == 403
    anonymous = authorize(delete["DELETE"], None, None)
    assert anonymous is not None and anonymous.status == 401
    assert any(name == b"www-authenticate" for name, _ in anonymous.headers)


def test_instances_from_env_and_defaults() -> None:
    config = load_config(
        ROUTES,
        env={
            "PRODUCT_URLS": "http://127.0.0.1:3002, http://127.0.0.1:3012/",
            "GATEWAY_RATE_LIMIT_REQUESTS": "5000",
        },
    )
    assert [i.url for i in config.instances["product"]] == [
        "http://127.0.0.1:3002",
        "http://127.0.0.1:3012",
    ]
    assert [i.url for i in config.instances["event_bus"]] == ["http://127.0.0.1:4000"]
    assert config.rate_limit.requests == 5000 and config.rate_limit.window_seconds == 60
    assert config.default_jwks_url() == "http://127.0.0.1:3001/api/users/.well-known/jwks.json"


def test_https_upstreams_are_refused() -> None:
    with pytest.raises(ValueError, match="http://"):
        load_config(ROUTES, env={"USER_URLS": "https://users.internal"})


def test_bearer_token_parsing() -> None:
    assert bearer_token(b"Bearer abc") == "abc"
    assert bearer_token(b"bearer  abc ") == "abc"
    assert bearer_token(b"Basic abc") is None
    assert bearer_token(b"Bearer ") is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_probes_after_reset() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(3, 30.0, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # not consecutive any more
    for _ in range(3):
        assert breaker.acquire()
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.available() and not breaker.acquire()
    clock.now += 30
    assert breaker.acquire()  # the half-open probe
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.acquire()  # only one probe at a time
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.now += 30
    assert breaker.acquire()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.acquire()


def test_breaker_lost_probe_does_not_shut_the_instance_forever() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 10.0, clock=clock)
    breaker.record_failure()
    clock.now += 10
    assert breaker.acquire()  # probe sent, outcome never reported
    clock.now += 10
    assert breaker.acquire()


def test_sliding_log_admits_the_limit_in_any_window() -> None:
    clock = FakeClock()
    limiter = LocalRateLimiter(100, 60.0, clock=clock)
    decisions = []
    for _ in range(101):
        decisions.append(limiter.hit_now("client"))
        clock.now += 0.1  # 101 requests spread over ~10 s: still one window
    assert all(d.allowed for d in decisions[:100])
    assert [d.remaining for d in decisions[:3]] == [99, 98, 97]
    assert decisions[99].remaining == 0
    refused = decisions[100]
    # The first request (at t=1000.0) leaves the window at 1060.0; now is 1010.0.
    assert not refused.allowed and refused.retry_after == pytest.approx(50.0)
    assert dict(refused.headers())[b"retry-after"] == b"50"
    assert limiter.hit_now("someone else").allowed
    clock.now = 1060.05  # the first admitted request has left the window
    assert limiter.hit_now("client").allowed
    assert not limiter.hit_now("client").allowed
    clock.now += 60
    assert limiter.hit_now("client").remaining == 99


def test_refused_requests_do_not_extend_the_block() -> None:
    clock = FakeClock()
    limiter = LocalRateLimiter(2, 10.0, clock=clock)
    assert limiter.hit_now("c").allowed and limiter.hit_now("c").allowed
    for _ in range(50):
        clock.now += 0.1
        assert not limiter.hit_now("c").allowed
    clock.now = 1010.01
    assert limiter.hit_now("c").allowed


class CountingVerifier:
    revocations = None

    def __init__(self, exp: float) -> None:
        self.calls = 0
        self.exp = exp

    async def verify(self, token: str) -> Principal:
        self.calls += 1
        return Principal("s", "customer", {"exp": self.exp})


async def test_verified_tokens_are_cached_until_they_expire() -> None:
    clock = FakeClock()
    inner = CountingVerifier(exp=clock.now + 60)
    cache = CachingVerifier(inner, clock=clock)  # type: ignore[arg-type]
    for _ in range(5):
        assert (await cache.verify("token")).subject == "s"
    assert inner.calls == 1
    clock.now += 61
    await cache.verify("token")
    assert inner.calls == 2


async def test_token_cache_is_bounded() -> None:
    clock = FakeClock()
    inner = CountingVerifier(exp=clock.now + 60)
    cache = CachingVerifier(inner, max_entries=100, clock=clock)  # type: ignore[arg-type]
    for index in range(1000):
        await cache.verify(f"token-{index}")
    assert len(cache._cache) <= 100


@pytest.mark.parametrize(
    ("status", "content_type", "failure"),
    [
        (504, b"application/problem+json", False),  # sent on purpose: an answer
        (503, b"application/problem+json; charset=utf-8", False),
        (504, b"text/html", True),  # a proxy's or crash page in front of the service
        (503, None, True),
        (502, b"application/problem+json", True),
        (500, b"application/problem+json", True),  # the service's unhandled-error answer
        (500, b"text/plain", True),
        (501, b"application/problem+json", False),
        (429, b"application/problem+json", False),
        (404, b"application/json", False),
        (200, b"application/json", False),
    ],
)
def test_breaker_counts_broken_answers_not_deliberate_ones(
    status: int, content_type: bytes | None, failure: bool
) -> None:
    assert answer_is_failure(status, content_type) is failure


def test_production_hides_docs_and_metrics_unless_enabled() -> None:
    development = load_config(ROUTES, env={})
    assert development.serves_docs and development.serves_metrics
    production = load_config(ROUTES, env={"ENVIRONMENT": "production"})
    assert not production.serves_docs and not production.serves_metrics
    enabled = load_config(
        ROUTES,
        env={
            "ENVIRONMENT": "production",
            "GATEWAY_EXPOSE_DOCS": "true",
            "GATEWAY_EXPOSE_METRICS": "1",
        },
    )
    assert enabled.serves_docs and enabled.serves_metrics
    turned_off = load_config(ROUTES, env={"GATEWAY_EXPOSE_METRICS": "false"})
    assert turned_off.serves_docs and not turned_off.serves_metrics


@pytest.mark.parametrize(
    "env",
    [
        {"ENVIRONMENT": "staging"},
        {"GATEWAY_EXPOSE_METRICS": "sometimes"},
    ],
)
def test_bad_exposure_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        load_config(ROUTES, env=env)


def test_an_instance_that_says_not_ready_is_ejected_at_once() -> None:
    """A 503 from /health/ready (an instance draining to stop) ejects on the first probe;
    a probe with no answer is a blip until it happens twice."""
    from cloudretail.runtime.gateway.config import BreakerSpec, InstanceAddress
    from cloudretail.runtime.gateway.registry import Registry

    registry = Registry(
        {"product": [InstanceAddress.parse("http://127.0.0.1:9")]},
        BreakerSpec(failures=5, reset_seconds=30),
    )
    instance = registry.upstreams["product"].instances[0]
    registry._record(instance, True)
    registry._record(instance, None)
    assert instance.healthy  # one unanswered probe: a blip
    registry._record(instance, None)
    assert not instance.healthy
    registry._record(instance, True)
    assert instance.healthy
    registry._record(instance, False)
    assert not instance.healthy  # it said so itself
    # ... so it is not tried even as a last resort, also once it stops answering (it went
    # away as it said it would), until it is ready again.
    assert registry.upstreams["product"].pick() is None
    registry._record(instance, None)
    assert registry.upstreams["product"].pick() is None
    registry._record(instance, True)
    registry._record(instance, None)
    registry._record(instance, None)
    assert not instance.healthy
    assert registry.upstreams["product"].pick() is instance  # unanswered: a last resort
