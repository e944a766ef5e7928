"""Gateway configuration: the generated route table plus deployment settings from the env.

routes.yaml (generated from the spec) says what the gateway routes and how strictly; the
environment says where the upstream instances are and how to reach the key server, so one
route table serves every environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

DEFAULT_ROUTES_PATH = Path("generated/gateway/routes.yaml")
AuthRule = Literal["public", "authenticated", "admin"]
ReadyPolicy = Literal["all", "any"]
Environment = Literal["development", "production"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RateLimitSpec(_Frozen):
    requests: int = Field(gt=0)
    window_seconds: float = Field(gt=0)


class BreakerSpec(_Frozen):
    failures: int = Field(gt=0)
    reset_seconds: float = Field(gt=0)


class UpstreamSpec(_Frozen):
    name: str
    prefix: str
    port: int
    env: str


class RouteSpec(_Frozen):
    """One route. `roles` (empty: any) are those its token may carry. The generator writes
    them for every rule (`admin` routes say `roles: [admin]`): no rule fills them in here."""

    method: str
    path: str
    upstream: str
    auth: AuthRule
    roles: tuple[str, ...] = ()

    @field_validator("method")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    @model_validator(mode="after")
    def _admin_names_its_role(self) -> RouteSpec:
        # An `admin` route without `roles: [admin]` would let any valid token through.
        if self.auth == "admin" and self.roles != ("admin",):
            raise ValueError(f"{self.method} {self.path}: an admin route has roles [admin]")
        return self


class TokenSpec(_Frozen):
    """The platform's tokens: `issuer` is their `iss` and `aud`; `roles` (None: any) those
    they may carry; the keys are at `jwks` on upstream `jwks_upstream`, or at the URL `jwks`."""

    issuer: str
    roles: tuple[str, ...] | None = None
    jwks_upstream: str | None = None
    jwks: str | None = None


class RouteFile(_Frozen):
    """The shape of generated/gateway/routes.yaml."""

    port: int = 8080
    rate_limit: RateLimitSpec
    body_limit_bytes: int = Field(gt=0)
    timeout_seconds: float = Field(gt=0)
    circuit_breaker: BreakerSpec
    cors_origins: tuple[str, ...] = ()
    token: TokenSpec | None = None
    upstreams: tuple[UpstreamSpec, ...]
    routes: tuple[RouteSpec, ...]


class InstanceAddress(_Frozen):
    """One reachable copy of an upstream service."""

    url: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> InstanceAddress:
        parts = urlsplit(url.strip().rstrip("/"))
        if parts.scheme != "http" or not parts.hostname:
            # The gateway speaks plain HTTP to services inside the platform's network; TLS
            # ends at the gateway (or at the load balancer in front of it).
            raise ValueError(f"upstream URL must be http://host:port, got {url!r}")
        port = parts.port or 80
        return cls(url=f"http://{parts.hostname}:{port}", host=parts.hostname, port=port)


class ConsoleSettings(_Frozen):
    """The local dev console at /_console (cloudretail.runtime.console). Only `cloudretail
    up` turns it on (GATEWAY_CONSOLE_DATA_DIR): it shows the supervisor's state, logs and
    traces from `data_dir`, the Mermaid diagrams of `architecture` (a Markdown file), and the
    events of the event bus API at `events_url`, read with an admin token it signs with
    `signing_key_file` (JWT_PRIVATE_KEY_FILE, the stack's own key)."""

    data_dir: str
    architecture: str | None = None
    events_url: str | None = None
    signing_key_file: str | None = None


class GatewayConfig(_Frozen):
    """Everything the gateway needs to run; build with `load_config` or directly in tests."""

    routes_file: RouteFile
    instances: Mapping[str, tuple[InstanceAddress, ...]]
    jwt_issuer: str = "cloudretail"
    jwt_audience: str = "cloudretail"
    jwks_url: str | None = None
    redis_url: str | None = None
    # With it, REDIS_URL is rediss:// and Redis's certificate is verified against this CA.
    redis_ca_file: str | None = None
    health_interval: float = 5.0
    health_timeout: float = 2.0
    # Consecutive failed probes before an instance is ejected; one success re-admits it.
    unhealthy_after: int = 2
    retries: int = 2
    retry_backoff: float = 0.05
    ready_policy: ReadyPolicy = "all"
    openapi_ttl: float = 60.0
    environment: Environment = "development"
    # Serve /openapi.json and /metrics on the public port? None: yes, except in production.
    expose_docs: bool | None = None
    expose_metrics: bool | None = None
    # None (the default everywhere but `cloudretail up`): no /_console.
    console: ConsoleSettings | None = None

    @property
    def rate_limit(self) -> RateLimitSpec:
        return self.routes_file.rate_limit

    @property
    def serves_docs(self) -> bool:
        return self._exposed(self.expose_docs)

    @property
    def serves_metrics(self) -> bool:
        return self._exposed(self.expose_metrics)

    def _exposed(self, setting: bool | None) -> bool:
        # Everything the gateway serves is public (the ingress sends it every path), so in
        # production the API description and the metrics stay off unless asked for.
        return self.environment != "production" if setting is None else setting

    def default_jwks_url(self) -> str | None:
        """JWKS_URL; else where the route file says the keys are (the issuer's first
        instance when they are on an upstream)."""
        token = self.routes_file.token
        if self.jwks_url or token is None or token.jwks is None:
            return self.jwks_url
        if token.jwks_upstream is None:
            return token.jwks
        issuers = self.instances.get(token.jwks_upstream)
        return f"{issuers[0].url}{token.jwks}" if issuers else None


def read_route_file(path: Path | str = DEFAULT_ROUTES_PATH) -> RouteFile:
    raw = yaml.safe_load(Path(path).read_text())
    route_file = RouteFile.model_validate(raw)
    names = {upstream.name for upstream in route_file.upstreams}
    unknown = sorted({route.upstream for route in route_file.routes} - names)
    if unknown:
        raise ValueError(f"routes name undeclared upstreams: {unknown}")
    return route_file


def instances_from_env(
    route_file: RouteFile, env: Mapping[str, str]
) -> dict[str, tuple[InstanceAddress, ...]]:
    """`<SERVICE>_URLS` (comma-separated) per upstream; default one instance on its own port."""
    instances: dict[str, tuple[InstanceAddress, ...]] = {}
    for upstream in route_file.upstreams:
        listed = [url for url in env.get(upstream.env, "").split(",") if url.strip()]
        urls = listed or [f"http://127.0.0.1:{upstream.port}"]
        instances[upstream.name] = tuple(InstanceAddress.parse(url) for url in urls)
    return instances


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    value = env.get(name, "").strip()
    return float(value) if value else default


_BOOL = TypeAdapter(bool)


def _flag(env: Mapping[str, str], name: str) -> bool | None:
    """true/false (also 1/0, yes/no, on/off), or None when unset."""
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        return _BOOL.validate_python(value)
    except ValidationError:
        raise ValueError(f"{name} must be true or false, got {value!r}") from None


def _environment(env: Mapping[str, str]) -> Environment:
    value = env.get("ENVIRONMENT", "").strip().lower() or "development"
    if value == "production":
        return "production"
    if value != "development":
        raise ValueError(f"ENVIRONMENT must be 'development' or 'production', got {value!r}")
    return "development"


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name, "").strip()
    return int(value) if value else default


def load_config(
    path: Path | str = DEFAULT_ROUTES_PATH, env: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Route table from `path`, deployment settings from `env` (default: os.environ).

    GATEWAY_RATE_LIMIT_REQUESTS / GATEWAY_RATE_LIMIT_WINDOW override the spec's limit (the
    benchmark raises it so 429s do not dominate a load test). ENVIRONMENT=production turns
    /openapi.json and /metrics off unless GATEWAY_EXPOSE_DOCS / GATEWAY_EXPOSE_METRICS say
    `true` (either may also say `false` in development). Bad values raise ValueError.
    """
    env = os.environ if env is None else env
    route_file = read_route_file(path)
    limit = route_file.rate_limit
    override = RateLimitSpec(
        requests=_int(env, "GATEWAY_RATE_LIMIT_REQUESTS", limit.requests),
        window_seconds=_float(env, "GATEWAY_RATE_LIMIT_WINDOW", limit.window_seconds),
    )
    if override != limit:
        route_file = route_file.model_copy(update={"rate_limit": override})
    token_issuer = route_file.token.issuer if route_file.token else "cloudretail"
    policy = env.get("GATEWAY_READY_POLICY", "all").strip().lower() or "all"
    redis_url = env.get("REDIS_URL") or None
    redis_ca_file = env.get("REDIS_CA_FILE") or None
    if redis_ca_file and not (redis_url or "").startswith("rediss://"):
        raise ValueError("REDIS_CA_FILE is set, so REDIS_URL must be a rediss:// (TLS) URL")
    if policy not in ("all", "any"):
        raise ValueError(f"GATEWAY_READY_POLICY must be 'all' or 'any', got {policy!r}")
    environment = _environment(env)
    return GatewayConfig(
        routes_file=route_file,
        instances=instances_from_env(route_file, env),
        jwt_issuer=env.get("JWT_ISSUER") or token_issuer,
        jwt_audience=env.get("JWT_AUDIENCE") or token_issuer,
        jwks_url=env.get("JWKS_URL") or None,
        redis_url=redis_url,
        redis_ca_file=redis_ca_file,
        health_interval=_float(env, "GATEWAY_HEALTH_INTERVAL", 5.0),
        retries=_int(env, "GATEWAY_RETRIES", 2),
        ready_policy="any" if policy == "any" else "all",
        environment=environment,
        expose_docs=_flag(env, "GATEWAY_EXPOSE_DOCS"),
        expose_metrics=_flag(env, "GATEWAY_EXPOSE_METRICS"),
        console=_console(env, environment),
    )


def _console(env: Mapping[str, str], environment: Environment) -> ConsoleSettings | None:
    data_dir = env.get("GATEWAY_CONSOLE_DATA_DIR", "").strip()
    if not data_dir:
        return None
    if environment == "production":
        # The console shows logs and events to whoever reaches the port, unauthenticated.
        raise ValueError(
            "GATEWAY_CONSOLE_DATA_DIR is set with ENVIRONMENT=production: the dev console is "
            "for `cloudretail up` on one machine, never for a deployment"
        )
    return ConsoleSettings(
        data_dir=data_dir,
        architecture=env.get("GATEWAY_CONSOLE_ARCHITECTURE") or None,
        events_url=env.get("GATEWAY_CONSOLE_EVENTS_URL") or None,
        signing_key_file=env.get("JWT_PRIVATE_KEY_FILE") or None,
    )
