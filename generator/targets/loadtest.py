"""The load test as an Artillery script, `generated/loadtest/artillery.yaml`: the journeys
of `cloudretail.generator.journeys`, one scenario each, and the spec's thresholds as Artillery's
`ensure` checks (a run that misses one exits non-zero).

Each request is named after its route (`GET /api/items/{id}`), so the per-endpoint
figures group a route's requests whatever ids they carry. A request that does not answer its
route's success status fails its virtual user (the `expect` plugin, failures reported as
errors); `max_error_ratio` bounds the share of failed virtual users.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from cloudretail.generator.journeys import ANY_ITEM, PLACEHOLDER, UNIQUE, Journey, Step, journeys
from cloudretail.generator.model import Platform
from cloudretail.generator.render import OutputFile

FOLDER = "loadtest"
# Artillery's value unique to a virtual user (the same in every request it sends).
UNIQUE_VALUE = "{{ $uuid }}"
# The client waits past the gateway's own timeout, so a slow upstream shows up as the
# gateway's 504 rather than as a client timeout.
CLIENT_GRACE_SECONDS = 5


@dataclass(frozen=True)
class RequestView:
    method: str
    name: str
    url: str
    status: int
    headers: dict[str, str] | None
    body: dict[str, Any] | None
    capture: dict[str, str] | None


@dataclass(frozen=True)
class ScenarioView:
    name: str
    weight: int
    requests: tuple[RequestView, ...]


@dataclass(frozen=True)
class ArtilleryView:
    platform: str
    source: str
    target: str
    cluster_target: str
    duration: int
    arrival_rate: int
    timeout: int
    p95_ms: int
    p99_ms: int
    max_error_rate: str
    scenarios: tuple[ScenarioView, ...]
    anonymous_per_minute: int
    rate_limit: str


def variable(name: str) -> str:
    """An Artillery template reading a variable of the virtual user."""
    return UNIQUE_VALUE if name == UNIQUE else f"{{{{ {name} }}}}"


def _fill(value: Any) -> Any:
    """A body with its `{placeholder}`s as Artillery templates."""
    if isinstance(value, str):
        return PLACEHOLDER.sub(lambda match: variable(match.group(1)), value)
    if isinstance(value, list):
        return [_fill(item) for item in value]
    if isinstance(value, dict):
        return {key: _fill(item) for key, item in value.items()}
    return value


def json_path(path: tuple[str, ...]) -> str:
    """`("items", "*", "id")` -> `$.items[*].id`."""
    text = "$"
    for part in path:
        text += "[*]" if part == ANY_ITEM else f".{part}"
    return text


def url(step: Step) -> str:
    if step.path_variable is None:
        return step.route.path
    return re.sub(r"{[^}]+}", lambda _: variable(step.path_variable or ""), step.route.path)


def request(step: Step) -> RequestView:
    capture = step.capture
    return RequestView(
        method=step.route.method.lower(),
        name=f"{step.route.method} {step.route.path}",
        url=url(step),
        status=step.status,
        headers={"Authorization": f"Bearer {variable('token')}"} if step.token else None,
        body=_fill(step.body) if step.body is not None else None,
        capture=({"json": json_path(capture.path), "as": capture.variable} if capture else None),
    )


def anonymous_per_minute(platform: Platform, found: tuple[Journey, ...]) -> int:
    """Requests without a token per minute, on average: the gateway limits those per client
    address, and a load generator is one address (token holders are limited per account)."""
    load = platform.load_test
    total = sum(journey.weight for journey in found)
    if load is None or not total:
        return 0
    per_user = sum(
        journey.weight * sum(not step.token for step in journey.steps) for journey in found
    )
    return math.ceil(load.arrival_rate * 60 * per_user / total)


def view(platform: Platform) -> ArtilleryView:
    load = platform.load_test
    assert load is not None
    found = journeys(platform)
    gateway = platform.gateway
    return ArtilleryView(
        platform=platform.name,
        source=platform.source,
        target=f"http://127.0.0.1:{gateway.deployable.port}",
        cluster_target=f"https://{platform.domain}",
        duration=load.duration_seconds,
        arrival_rate=load.arrival_rate,
        timeout=math.ceil(gateway.timeout_seconds) + CLIENT_GRACE_SECONDS,
        p95_ms=load.p95_ms,
        p99_ms=load.p99_ms,
        max_error_rate=f"{load.max_error_ratio * 100:g}",
        scenarios=tuple(
            ScenarioView(
                journey.name, journey.weight, tuple(request(step) for step in journey.steps)
            )
            for journey in found
        ),
        anonymous_per_minute=anonymous_per_minute(platform, found),
        rate_limit=gateway.rate_limit,
    )


def files(platform: Platform) -> list[OutputFile]:
    if platform.load_test is None or not journeys(platform):
        return []
    return [
        OutputFile(
            f"{FOLDER}/artillery.yaml", "loadtest/artillery.yaml.j2", {"view": view(platform)}
        )
    ]
