"""Failures upstream: instances dying, hanging and coming back; retries; the breaker."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
from cloudretail.runtime.auth import TokenVerifier, static_jwks
from cloudretail.runtime.errors import problem_response
from cloudretail.runtime.gateway import create_gateway
from cloudretail.runtime.gateway.breaker import BreakerState
from cloudretail.runtime.gateway.config import BreakerSpec
from fastapi import FastAPI
from fastapi.responses import Response

from tests.gateway.conftest import (
    EchoState,
    Keys,
    RawServer,
    Server,
    echo_app,
    eventually,
    make_config,
    problem,
    unique_subject,
)


async def served_by(client: httpx.AsyncClient, count: int) -> Counter[str]:
    return Counter([(await client.get("/api/products")).json()["service"] for _ in range(count)])


async def test_one_of_two_instances_killed_requests_keep_succeeding(keys: Keys) -> None:
    first = await Server(echo_app(EchoState("product-a"))).start()
    second = await Server(echo_app(EchoState("product-b"))).start()
    # The failed requests to the dead instance may open its breaker; a short reset keeps the
    # re-admission below quick whatever the machine's load made of the timing.
    gateway = create_gateway(
        make_config(
            {"product": [first.url, second.url]},
            health_interval=0.1,
            circuit_breaker=BreakerSpec(failures=5, reset_seconds=0.5),
        )
    )
    server = await Server(gateway).start()
    instances = {i.url: i for i in gateway.registry.upstreams["product"].instances}
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            served = await served_by(client, 20)
            assert set(served) == {"product-a", "product-b"}  # both take traffic

            await first.stop()
            for _ in range(30):
                response = await client.get("/api/products")
                assert response.status_code == 200
                assert response.json()["service"] == "product-b"
            await eventually(lambda: not instances[first.url].healthy)
            assert instances[second.url].healthy

            ready = (await client.get("/health/ready")).json()
            assert ready["details"]["product"] is True  # by name; instances are in the metrics
            metrics = (await client.get("/metrics")).text
            assert (
                f'gateway_upstream_instance_healthy{{instance="{first.url}",upstream="product"}} 0.0'
                in metrics
            )

            # Back on the same port: probed healthy, re-admitted, serving again.
            await first.start()
            await eventually(lambda: instances[first.url].healthy)
            await eventually(lambda: instances[first.url].breaker.available())
            served = await served_by(client, 20)
            assert served["product-a"] > 0
    finally:
        await asyncio.gather(server.stop(), first.stop(), second.stop())


async def test_all_instances_down_the_breaker_answers_503_fast(keys: Keys) -> None:
    hanging = [await RawServer("hang").start(), await RawServer("hang").start()]
    config = make_config(
        {"product": [raw.url for raw in hanging]},
        timeout_seconds=0.3,
        circuit_breaker=BreakerSpec(failures=2, reset_seconds=30),
        health_interval=60,
        health_timeout=0.2,
    )
    server = await Server(create_gateway(config)).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            for _ in range(4):  # two failures on each instance open both breakers
                response = await client.get("/api/products")
                assert response.status_code == 504
                problem(response)
            reached = sum(len(raw.requests) for raw in hanging)

            for _ in range(20):
                response = await client.get("/api/products")
                assert response.status_code == 503
                assert int(response.headers["retry-after"]) == 30
                problem(response)
            # Fast by construction, not by a stopwatch: a request sent to a hanging instance
            # can only end in a 504 after the timeout, and none was sent.
            assert sum(len(raw.requests) for raw in hanging) == reached
    finally:
        await server.stop()
        for raw in hanging:
            await raw.stop()


async def test_breaker_half_opens_and_closes_when_the_instance_recovers(keys: Keys) -> None:
    upstream = Server(echo_app(EchoState("product")))
    config = make_config(
        {"product": [upstream.url]},
        circuit_breaker=BreakerSpec(failures=3, reset_seconds=2.0),
        retries=0,
        health_interval=60,
    )
    gateway = create_gateway(config)
    server = await Server(gateway).start()
    breaker = gateway.registry.upstreams["product"].instances[0].breaker
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            statuses = [(await client.get("/api/products")).status_code for _ in range(5)]
            assert statuses == [502, 502, 502, 503, 503]
            await upstream.start()
            assert (await client.get("/api/products")).status_code == 503  # still open
            await asyncio.sleep(2.05)
            assert (await client.get("/api/products")).status_code == 200  # the probe
            assert breaker.state.value == "closed"
            assert (await client.get("/api/products")).status_code == 200
    finally:
        await asyncio.gather(server.stop(), upstream.stop())


async def test_only_idempotent_methods_are_retried(keys: Keys) -> None:
    raw = await RawServer("close").start()
    config = make_config(
        {"inventory": [raw.url], "order": [raw.url]},
        health_interval=3600,
        circuit_breaker=BreakerSpec(failures=100, reset_seconds=30),
    )
    from cloudretail.runtime.auth import TokenVerifier, static_jwks

    verifier = TokenVerifier(
        static_jwks(keys.issuer.jwks()), issuer="cloudretail", audience="cloudretail"
    )
    server = await Server(create_gateway(config, verifier=verifier)).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            await eventually(lambda: len(raw.requests) >= 1)  # the first health probe
            await asyncio.sleep(0.05)
            baseline = len(raw.requests)
            put = await client.put(
                "/api/inventory/1", json={"quantity": 1}, headers=keys.bearer("admin")
            )
            assert put.status_code == 502
            problem(put)
            assert len(raw.requests) - baseline == 3  # first try and two retries
            baseline = len(raw.requests)
            post = await client.post("/api/orders", json={"items": []}, headers=keys.bearer())
            assert post.status_code == 502
            assert len(raw.requests) - baseline == 1  # never repeated: it may have taken effect
    finally:
        await server.stop()
        await raw.stop()


async def test_timeout_is_504_and_not_retried(keys: Keys) -> None:
    raw = await RawServer("hang").start()
    config = make_config({"product": [raw.url]}, timeout_seconds=0.2, health_interval=3600)
    server = await Server(create_gateway(config)).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            await eventually(lambda: len(raw.requests) >= 1)
            await asyncio.sleep(0.3)  # let the probe time out on its own
            baseline = len(raw.requests)
            started = time.perf_counter()
            response = await client.get("/api/products")
            assert response.status_code == 504
            assert 0.2 <= time.perf_counter() - started < 2
            assert len(raw.requests) - baseline == 1
    finally:
        await server.stop()
        await raw.stop()


class AnswerState:
    """An upstream that answers every POST with a fixed status and body, and counts them."""

    def __init__(self, status: int, *, problem_json: bool) -> None:
        self.status = status
        self.problem_json = problem_json
        self.answered = 0


def answering_app(state: AnswerState) -> FastAPI:
    app = FastAPI()

    @app.get("/health/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.post("/{path:path}")
    async def answer(path: str) -> Response:
        state.answered += 1
        if state.problem_json:
            # What a service sends on purpose, e.g. the order service when the payment
            # provider timed out (handlers/order.py): RFC 9457 problem+json.
            return problem_response(state.status, detail="payment provider timed out")
        return Response(b"<html>upstream broke</html>", state.status, media_type="text/html")

    return app


def order_verifier(keys: Keys) -> TokenVerifier:
    return TokenVerifier(
        static_jwks(keys.issuer.jwks()), issuer="cloudretail", audience="cloudretail"
    )


async def test_deliberate_504_answers_do_not_open_the_breaker(keys: Keys) -> None:
    state = AnswerState(504, problem_json=True)
    upstream = await Server(answering_app(state)).start()
    config = make_config(
        {"order": [upstream.url]},
        circuit_breaker=BreakerSpec(failures=5, reset_seconds=30),
        health_interval=3600,
    )
    gateway = create_gateway(config, verifier=order_verifier(keys))
    server = await Server(gateway).start()
    breaker = gateway.registry.upstreams["order"].instances[0].breaker
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            for _ in range(10):  # twice the breaker's threshold, from one customer
                response = await client.post("/api/orders", json={}, headers=keys.bearer())
                assert response.status_code == 504
                assert response.headers["content-type"] == "application/problem+json"
                assert response.json()["detail"] == "payment provider timed out"  # the service's
            assert state.answered == 10  # every one reached the order service
            assert breaker.state is BreakerState.CLOSED
            # Another customer still gets through to the service.
            other = await client.post(
                "/api/orders", json={}, headers=keys.bearer(subject=unique_subject())
            )
            assert state.answered == 11 and other.status_code == 504

            # The service going away is still a failure: connect errors open the breaker.
            await upstream.stop()
            statuses = [
                (await client.post("/api/orders", json={}, headers=keys.bearer())).status_code
                for _ in range(6)
            ]
            assert statuses == [502] * 5 + [503]
            assert breaker.state is BreakerState.OPEN
    finally:
        await asyncio.gather(server.stop(), upstream.stop())


async def test_upstream_failures_that_are_not_deliberate_still_open_the_breaker(
    keys: Keys,
) -> None:
    # A 503 that is not problem+json (a proxy or crash page in front of the service) and
    # a 500 (even as problem+json: the service's handler for unhandled errors) count.
    for status, problem_json in ((503, False), (500, True), (502, False)):
        state = AnswerState(status, problem_json=problem_json)
        upstream = await Server(answering_app(state)).start()
        config = make_config(
            {"order": [upstream.url]},
            circuit_breaker=BreakerSpec(failures=5, reset_seconds=30),
            health_interval=3600,
        )
        gateway = create_gateway(config, verifier=order_verifier(keys))
        server = await Server(gateway).start()
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                statuses = [
                    (await client.post("/api/orders", json={}, headers=keys.bearer())).status_code
                    for _ in range(6)
                ]
            assert statuses == [status] * 5 + [503], (status, problem_json)
            assert state.answered == 5
        finally:
            await asyncio.gather(server.stop(), upstream.stop())
