"""Auth rules: what a route's `auth:` means, declared once.

The spec's `auth:` is checked against `AUTH_RULES`; the model, the checks, the services'
routes, the deployment and the gateway's route table read the rule from here. Adding a
rule is adding an entry (and, when its check is new, a dependency in `runtime/auth.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cloudretail.generator.render import pystr

Token = Literal["user", "service"]


@dataclass(frozen=True)
class AuthRule:
    name: str
    # Which token the route needs: a user's (verified with the issuer's keys, so the spec
    # needs `auth`), the platform's service token, or none.
    token: Token | None
    # The roles the rule implies; None: the route's own `roles` (any role without them).
    roles: tuple[str, ...] | None
    # How the gateway's route table (routes.yaml) names the rule; None: the gateway does not
    # route it (service-to-service routes).
    gateway: str | None
    # The FastAPI dependency of the generated route, `{roles}` its roles as string literals,
    # and what it imports (as Imports.add arguments).
    dependency: str | None = None
    dependency_import: tuple[str, ...] = ()

    @property
    def via_gateway(self) -> bool:
        return self.gateway is not None

    @property
    def takes_roles(self) -> bool:
        """A route with this rule may name its `roles`."""
        return self.roles is None

    def route_roles(self, given: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
        """The roles a route with this rule asks for, `given` those the spec names."""
        return self.roles if self.roles is not None else tuple(given or ())

    def dependency_expr(self, roles: tuple[str, ...]) -> str | None:
        """`Depends(...)` of the generated route, or None."""
        if self.dependency is None:
            return None
        return self.dependency.format(roles=", ".join(pystr(role) for role in roles))


_REQUIRE = "Depends(require({roles}))"

AUTH_RULES: dict[str, AuthRule] = {
    rule.name: rule
    for rule in (
        AuthRule("public", token=None, roles=(), gateway="public"),
        AuthRule(
            "authenticated",
            token="user",
            roles=None,
            gateway="authenticated",
            dependency=_REQUIRE,
            dependency_import=("cloudretail.runtime.auth", "require"),
        ),
        AuthRule(
            "admin",
            token="user",
            roles=("admin",),
            gateway="admin",
            dependency=_REQUIRE,
            dependency_import=("cloudretail.runtime.auth", "require"),
        ),
        AuthRule(
            "service",
            token="service",
            roles=(),
            gateway=None,
            dependency="Depends(require_service)",
            dependency_import=("cloudretail.runtime.auth", "require_service"),
        ),
    )
}


def auth_rule(name: str) -> AuthRule:
    return AUTH_RULES[name]


def rule_names(*, via_gateway: bool = False) -> list[str]:
    """The rules' names (only those the gateway routes, with `via_gateway`)."""
    return [name for name, rule in AUTH_RULES.items() if rule.via_gateway or not via_gateway]
