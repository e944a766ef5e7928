"""Cross-reference checks of the spec's `load_test`: the routes, journeys, bodies and
placeholders it names exist (cloudretail.generator.journeys derives the journeys from the model)."""

from __future__ import annotations

from collections.abc import Callable

from cloudretail.generator.auth_rules import auth_rule
from cloudretail.generator.journeys import BROWSE, REGISTER, UNIQUE, Access, access, placeholders
from cloudretail.generator.loader import PathKey
from cloudretail.generator.model import duration_ms, singular
from cloudretail.generator.spec import RouteSpec, Spec
from cloudretail.generator.validation import suggest

Report = Callable[..., None]  # (path, message, *, key=False), as _Checker.error


def _access(route: RouteSpec) -> Access | None:
    rule = auth_rule(route.auth)
    if not rule.via_gateway:
        return None
    return access(rule.token, rule.route_roles(route.roles))


def _rows(spec: Spec) -> set[str]:
    """The row names of the tables a virtual user can browse (a public list route)."""
    rows = set()
    for service in spec.services.values():
        for route in service.routes:
            table, _, operation = (route.crud or "").partition(".")
            if operation == "list" and table in service.tables and _access(route) == "anonymous":
                rows.add(singular(table))
    return rows


def check_load_test(spec: Spec, error: Report) -> None:
    load = spec.load_test
    if load is None:
        return
    base: PathKey = ("load_test",)
    if duration_ms(load.duration) < 1000:
        error((*base, "duration"), "at least 1s: load phases last whole seconds")
    if duration_ms(load.p95) > duration_ms(load.p99):
        error((*base, "p95"), f"the p95 ceiling ({load.p95}) is above the p99 one ({load.p99})")
    rows = _rows(spec)
    names = {BROWSE} if rows else set()
    # The body model each journey route sends, with the route that sends it.
    needed: dict[str, str] = {}
    account_bodies: set[str] = set()
    unresolved = False  # an account route not found: which bodies it sends is not known
    if load.account is not None:
        names.add(REGISTER)
        issuer = spec.auth.issuer if spec.auth else None
        if issuer is None or issuer not in spec.services:
            unresolved = True
            error(
                (*base, "account"),
                "signing up and logging in needs the platform's own token issuer (`auth.issuer`)",
            )
        else:
            public_posts = [
                route
                for route in spec.services[issuer].routes
                if route.method == "POST" and _access(route) == "anonymous"
            ]
            for key in ("signup", "login"):
                path = getattr(load.account, key)
                found = next((route for route in public_posts if route.path == path), None)
                if found is None:
                    unresolved = True
                    error(
                        (*base, "account", key),
                        f"service '{issuer}' has no public POST route at '{path}'"
                        f"{suggest(path, [route.path for route in public_posts])}",
                    )
                elif found.body:
                    needed.setdefault(found.body, f"POST {path}")
                    account_bodies.add(found.body)
    for service in spec.services.values():
        for route in service.routes:
            reach = _access(route)
            if route.saga is None or reach is None:
                continue
            if reach == "account" and load.account is None:
                continue
            names.add(route.saga)
            if route.body:
                needed.setdefault(route.body, f"{route.method} {route.path}")
    if all(load.weights.get(name, 1) == 0 for name in names):
        error(
            base,
            "no journey to run: no table with a public list route, no `account`, no saga "
            "route a virtual user may call, or every weight 0",
        )
    for name in load.weights:
        if name not in names:
            listed = ", ".join(sorted(names)) or "none"
            error(
                (*base, "weights", name),
                f"no journey '{name}' (journeys: {listed}){suggest(name, names)}",
                key=True,
            )
    for model, sender in needed.items():
        if model not in load.bodies:
            error((*base, "bodies"), f"{sender} sends a `{model}` body: give one here")
    for model, body in load.bodies.items():
        where = (*base, "bodies", model)
        if model not in needed:
            if unresolved:
                continue
            error(
                where,
                f"no journey sends a `{model}` body{suggest(model, needed)}",
                key=True,
            )
            continue
        known = {UNIQUE} if model in account_bodies else {UNIQUE, *rows}
        for name in dict.fromkeys(placeholders(body)):
            if name not in known:
                listed = ", ".join(f"{{{known_name}}}" for known_name in sorted(known))
                error(
                    where,
                    f"unknown placeholder '{{{name}}}' (known here: {listed})"
                    f"{suggest(name, known)}",
                )
