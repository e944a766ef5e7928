"""The load test's journeys, derived from the routes (spec: `load_test`).

- `browse`: for each table with a public list route, list it and keep the key of one row
  of the page (picked at random), then read that row with the table's public get route;
- `register`: sign up, then log in (`load_test.account`);
- one journey per saga route a new account may call, named after its saga: sign up and log
  in when the route needs a token, browse the tables whose rows its body names (`{item}`),
  start the saga, then read the result back with the GET route one path parameter below the
  saga route's path (that parameter's value is the saga answer's field of the same name).

Every request expects its route's success status. A journey is made of steps that name
routes and variables; which tool runs it is the target's business (targets/loadtest.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from cloudretail.generator.model import LoadTest, Platform, Route, Table

# `{name}` in a body string: UNIQUE, or the row name of a browsable table.
PLACEHOLDER = re.compile(r"{([a-z][a-z0-9_]*)}")
UNIQUE = "unique"
BROWSE = "browse"
REGISTER = "register"
# The field of a generated list answer holding the page's rows (templates/services/schemas.py.j2).
PAGE_ITEMS = "items"
# The variable the login step keeps the token in.
TOKEN = "token"
ANY_ITEM = "*"
# A path parameter alone in the last segment of a path.
_LAST_PARAMETER = re.compile(r"/{([^}/]+)}$")

Access = Literal["anonymous", "account"]


def access(token: str | None, roles: tuple[str, ...] | list[str] | None) -> Access | None:
    """How a virtual user may call a route: anonymously, with a new account's token, or not
    at all (a role a new account does not have, or the platform's service token)."""
    if token is None:
        return "anonymous"
    if token == "user" and not roles:
        return "account"
    return None


def placeholders(value: Any) -> Iterator[str]:
    """The `{name}`s in the strings of a body, in order."""
    if isinstance(value, str):
        yield from PLACEHOLDER.findall(value)
    elif isinstance(value, list):
        for item in value:
            yield from placeholders(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from placeholders(item)


@dataclass(frozen=True)
class Capture:
    """Keep a field of the answer in `variable`; `path` names the fields down to it, `*`
    being any element of a list (one picked at random)."""

    variable: str
    path: tuple[str, ...]


@dataclass(frozen=True)
class Step:
    route: Route
    path_variable: str | None = None  # fills the route's path parameter
    body: dict[str, Any] | None = None  # `{placeholder}`s as the spec writes them
    capture: Capture | None = None
    token: bool = False  # sends the token the login step kept

    @property
    def status(self) -> int:
        return self.route.status or 200


@dataclass(frozen=True)
class Journey:
    name: str
    weight: int
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class Browsable:
    """A table a virtual user can browse: its public list route and, maybe, get route."""

    table: Table
    list_route: Route
    get_route: Route | None

    @property
    def row(self) -> str:
        return self.table.row_name


def _public(route: Route) -> bool:
    return route.via_gateway and access(route.rule.token, route.roles) == "anonymous"


def _one_parameter(path: str) -> bool:
    return path.count("{") == 1 and _LAST_PARAMETER.search(path) is not None


def browsable(platform: Platform) -> tuple[Browsable, ...]:
    found = []
    for service in platform.services:
        public = [route for route in service.routes if _public(route)]
        for table in service.tables:
            by_operation = {
                route.crud_operation: route for route in public if route.crud_table == table.name
            }
            listing = by_operation.get("list")
            getting = by_operation.get("get")
            if listing is not None:
                if getting is not None and not _one_parameter(getting.path):
                    getting = None
                found.append(Browsable(table, listing, getting))
    return tuple(found)


def _browse(table: Browsable) -> list[Step]:
    key = table.table.primary_key.name
    steps = [Step(table.list_route, capture=Capture(table.row, (PAGE_ITEMS, ANY_ITEM, key)))]
    if table.get_route is not None:
        steps.append(Step(table.get_route, path_variable=table.row))
    return steps


def _body(load: LoadTest, route: Route) -> dict[str, Any] | None:
    return load.bodies.get(route.body) if route.body else None


def _account(load: LoadTest) -> list[Step]:
    account = load.account
    assert account is not None
    return [
        Step(account.signup, body=_body(load, account.signup)),
        Step(
            account.login,
            body=_body(load, account.login),
            capture=Capture(TOKEN, (account.token,)),
        ),
    ]


def saga_routes(platform: Platform, load: LoadTest) -> tuple[Route, ...]:
    """The saga routes that get a journey: routed by the gateway, callable anonymously or,
    with an account to sign up with, by a new account."""
    return tuple(
        route
        for service in platform.services
        for route in sorted(service.routes, key=lambda route: route.index)
        if route.saga is not None
        and route.via_gateway
        and _reachable(route, account=load.account is not None)
    )


def _reachable(route: Route, *, account: bool) -> bool:
    """A virtual user may call `route`: anonymously, or with a new account's token (when it
    has one)."""
    reach = access(route.rule.token, route.roles)
    return reach == "anonymous" or (reach == "account" and account)


def _read_back(platform: Platform, route: Route, token: bool) -> tuple[Route, str] | None:
    """The GET route one path parameter below `route` that the journey may call (with its
    token, when it has one), and that parameter's name."""
    for candidate in platform.service(route.service).routes:
        found = _LAST_PARAMETER.search(candidate.path)
        if (
            candidate.method == "GET"
            and candidate.via_gateway
            and found is not None
            and candidate.path[: found.start()] == route.path
            and _reachable(candidate, account=token)
        ):
            return candidate, found.group(1)
    return None


def _saga(platform: Platform, load: LoadTest, route: Route) -> Journey:
    token = route.rule.token is not None
    steps = _account(load) if token else []
    body = _body(load, route)
    tables = {table.row: table for table in browsable(platform)}
    for row in dict.fromkeys(placeholders(body)):
        if row in tables:
            steps += _browse(tables[row])
    read = _read_back(platform, route, token)
    key = read[1] if read else None
    steps.append(Step(route, body=body, capture=Capture(key, (key,)) if key else None, token=token))
    if read is not None:
        steps.append(Step(read[0], path_variable=read[1], token=read[0].rule.token is not None))
    name = route.saga
    assert name is not None
    return Journey(name, load.weight(name), tuple(steps))


def journeys(platform: Platform) -> tuple[Journey, ...]:
    """Every journey of the platform's load test with a weight above 0 (none without one)."""
    load = platform.load_test
    if load is None:
        return ()
    found = []
    tables = browsable(platform)
    if tables:
        found.append(
            Journey(BROWSE, load.weight(BROWSE), tuple(s for t in tables for s in _browse(t)))
        )
    if load.account is not None:
        found.append(Journey(REGISTER, load.weight(REGISTER), tuple(_account(load))))
    found += [_saga(platform, load, route) for route in saga_routes(platform, load)]
    return tuple(journey for journey in found if journey.weight > 0)
