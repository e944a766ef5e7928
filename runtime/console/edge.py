"""The gateway's own state, as the console shows it: each upstream's instances with their
health and circuit breaker, and the rate limiter's settings and counters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cloudretail.runtime.gateway.ratelimit import LocalRateLimiter

if TYPE_CHECKING:
    from cloudretail.runtime.gateway.app import Gateway


def upstreams(gateway: Gateway) -> list[dict[str, Any]]:
    """Every upstream and its instances: probed health, breaker state, requests in flight."""
    listed = []
    for name, upstream in sorted(gateway.registry.upstreams.items()):
        listed.append(
            {
                "name": name,
                "healthy_instances": upstream.healthy_count,
                "instances": [
                    {
                        "url": instance.url,
                        "healthy": instance.healthy,
                        "breaker": instance.breaker.state.value,
                        "in_flight": instance.in_flight,
                    }
                    for instance in upstream.instances
                ],
            }
        )
    return listed


def rate_limit(gateway: Gateway) -> dict[str, Any]:
    """The limit, where it is kept, the requests refused so far, and (kept in this process)
    each client's requests in the current window, busiest first."""
    limiter = gateway.limiter
    config = gateway.config.rate_limit
    refused = gateway.metrics.metrics.registry.get_sample_value("gateway_rate_limited_total")
    clients: list[dict[str, Any]] | None = None
    if isinstance(limiter, LocalRateLimiter):
        clients = [{"client": key, "requests": used} for key, used in limiter.usage()]
    return {
        "limit": config.requests,
        "window_seconds": config.window_seconds,
        "store": limiter.store,
        "degraded": limiter.degraded,
        "refused": int(refused or 0),
        # None: the counters are in Redis, shared by the replicas, not listed here.
        "clients": clients,
    }
