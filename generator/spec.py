"""The spec's input schema: pydantic models that mirror spec/cloudretail.yaml one to one.

Nothing here is resolved or defaulted beyond what the YAML says; `generator.model` does
that. Unknown keys are refused everywhere (`extra="forbid"`), so a typo never passes
silently.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from generator.auth_rules import rule_names
from generator.choices import Matching, OneOf
from generator.kinds import KINDS

Identifier = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$", max_length=63)]
ServiceName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9]*$", max_length=30)]
TopicName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9.-]*[a-z0-9]$", max_length=200)]
EventName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")]
Duration = Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]*(ms|s|m|h|d)$")]
ByteSize = Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]*(B|KiB|MiB|GiB)$")]
Quantity = Annotated[str, StringConstraints(pattern=r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi)?$")]
UrlPath = Annotated[str, StringConstraints(pattern=r"^/[A-Za-z0-9_./{}-]*$")]
ClassName = Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Za-z0-9]*$", max_length=63)]
SuccessStatus = Annotated[int, Field(ge=200, le=299)]
ErrorStatus = Annotated[int, Field(ge=400, le=599)]
Port = Annotated[int, Field(ge=1, le=65535)]
Percent = int
# A column's `type:` is a kind of generator/kinds.py, a route's `auth:` a rule of
# generator/auth_rules.py (the gateway's only those it routes): checked against the
# registries when a spec is validated.
ColumnType = Annotated[str, OneOf(lambda: list(KINDS))]
AuthName = Annotated[str, OneOf(rule_names)]
GatewayAuthName = Annotated[str, OneOf(lambda: rule_names(via_gateway=True))]


def _payload_pattern() -> str:
    """An event payload field's type: a kind events may carry, maybe `| null`."""
    kinds = "|".join(name for name, kind in KINDS.items() if kind.payload)
    return rf"^({kinds})( \| null)?$"


PayloadType = Annotated[str, Matching(_payload_pattern)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _single_column(value: Any) -> Any:
    """`indexes: [email]` is shorthand for `indexes: [{columns: [email]}]`."""
    return {"columns": [value]} if isinstance(value, str) else value


class ScalingSpec(Strict):
    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=1)
    cpu: Percent | None = None
    memory: Percent | None = None


class ScalingDefaults(Strict):
    min: int = Field(ge=0)
    max: int = Field(ge=1)
    cpu: Percent
    memory: Percent


class ProbeSpec(Strict):
    path: UrlPath
    initial_delay: int = Field(ge=0)
    period: int = Field(ge=1)
    timeout: int = Field(ge=1)
    failures: int = Field(ge=1)


class ProbesSpec(Strict):
    liveness: ProbeSpec
    readiness: ProbeSpec


class ResourceAmounts(Strict):
    cpu: Quantity
    memory: Quantity


class ResourcesSpec(Strict):
    requests: ResourceAmounts
    limits: ResourceAmounts


class DefaultsSpec(Strict):
    scaling: ScalingDefaults
    probes: ProbesSpec
    resources: ResourcesSpec


class VaultSpec(Strict):
    """HashiCorp Vault, read by the External Secrets Operator with Kubernetes auth."""

    server: Annotated[str, StringConstraints(pattern=r"^https://[^\s/]+(:[0-9]+)?/?$")]
    path: str = "secret"  # the KV secrets engine's mount
    version: Literal["v1", "v2"] = "v2"
    auth_mount: str = "kubernetes"  # where Vault's Kubernetes auth method is mounted
    role: str  # the Vault role bound to the platform's service account
    prefix: str | None = None  # where the platform's secrets live in the mount (its name)


class SecretsSpec(Strict):
    vault: VaultSpec | None = None


class PlatformSpec(Strict):
    name: Identifier
    namespace: Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
    registry: str
    domain: str
    cors_origins: list[str] = []
    # Where the prod overlay's Secrets come from; plain Secrets (secrets.example.env) when
    # not given, and always in the dev overlay.
    secrets: SecretsSpec = SecretsSpec()


class TopicSpec(Strict):
    description: str = ""
    partitions: int = Field(ge=1, le=10_000)
    replication: int = Field(default=3, ge=1, le=10)
    retention: Duration
    cleanup_policy: Literal["delete", "compact"] = "delete"
    events: list[str] = Field(min_length=1)


class EventSpec(Strict):
    description: str = ""
    version: str = "1"
    key: Identifier
    payload: dict[Identifier, PayloadType] = Field(min_length=1)


class RateLimitSpec(Strict):
    requests: int = Field(ge=1)
    per: Duration


class CircuitBreakerSpec(Strict):
    failures: int = Field(ge=1)
    reset: Duration


class GatewayRouteSpec(Strict):
    """A gateway route to an upstream that is not a spec service's own route (the event bus)."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    path: UrlPath
    upstream: str
    auth: GatewayAuthName
    roles: list[Identifier] | None = None
    description: str = ""


class GatewaySpec(Strict):
    port: Port
    rate_limit: RateLimitSpec
    body_limit: ByteSize = "1MiB"
    timeout: Duration = "10s"
    circuit_breaker: CircuitBreakerSpec = CircuitBreakerSpec(failures=5, reset="30s")
    routes: list[GatewayRouteSpec] = []
    scaling: ScalingSpec = ScalingSpec()
    resources: ResourcesSpec | None = None


class AuthSpec(Strict):
    """Who signs the platform's tokens, where its keys are, and the roles a token may carry.

    `issuer` names the spec's service that signs them, and `jwks` its public GET route that
    serves the keys; without `issuer`, an outside identity provider signs them and `jwks` is
    the full URL of its keys.
    """

    issuer: ServiceName | None = None
    jwks: Annotated[str, StringConstraints(pattern=r"^(/|https?://)[^\s]*$", max_length=500)]
    roles: list[Identifier] = Field(min_length=1)


class EventBusSpec(Strict):
    port: Port
    prefix: UrlPath = "/api/events"
    database: Identifier | None = None  # default: <platform name>_events
    store_retention: Duration = "7d"
    scaling: ScalingSpec = ScalingSpec()
    resources: ResourcesSpec | None = None


class ColumnSpec(Strict):
    type: ColumnType
    description: str = ""
    length: int | None = Field(default=None, ge=1, le=10_485_760)
    precision: int | None = Field(default=None, ge=1, le=1000)
    scale: int | None = Field(default=None, ge=0, le=1000)
    values: list[str] | None = None
    primary_key: bool = False
    unique: bool = False
    nullable: bool = True
    default: bool | int | float | str | None = None
    on_update: Literal["now"] | None = None
    check: (
        Annotated[str, StringConstraints(pattern=r"^(>=|<=|>|<|=|!=)\s*-?[0-9]+(\.[0-9]+)?$")]
        | None
    ) = None
    secret: bool = False
    # Stored with AES-256-GCM under the platform's key ring (ENCRYPTION_KEYS); the API sees
    # plaintext. Such a column cannot be searched, sorted, indexed or unique.
    encrypted: bool = False
    renamed_from: Identifier | None = None


class IndexSpec(Strict):
    name: Identifier | None = None
    columns: list[str] = Field(min_length=1)
    unique: bool = False


class FilterSpec(Strict):
    name: Identifier
    op: Literal["eq", "ge", "le", "gt", "lt", "search"]
    column: str | None = None
    columns: list[str] | None = None


class CacheSpec(Strict):
    ttl: Duration


class TableSpec(Strict):
    description: str = ""
    columns: dict[Identifier, ColumnSpec] = Field(min_length=1)
    indexes: list[Annotated[IndexSpec, BeforeValidator(_single_column)]] = []
    filters: list[FilterSpec] = []
    sort: list[str] = []
    cache: CacheSpec | None = None
    allow_destructive: bool = False


class ServiceEventsSpec(Strict):
    publishes: list[str] = []
    consumes: list[str] = []


class RouteSpec(Strict):
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    path: UrlPath
    auth: AuthName
    roles: list[Identifier] | None = None
    name: Identifier | None = None
    handler: Identifier | None = None
    crud: str | None = None
    saga: Identifier | None = None
    description: str = ""
    # Handler routes only: the pydantic model in handlers/<service>.py that the handler reads
    # with `ctx.body(Model)`, the status it answers with on success, and the problem statuses
    # it may answer with besides those every route of its shape can give. All three go into
    # the service's OpenAPI document.
    body: ClassName | None = None
    status: SuccessStatus | None = None
    errors: list[ErrorStatus] = []


class SagaStepSpec(Strict):
    name: Identifier
    call: str
    compensate: str | None = None


class SagaSpec(Strict):
    timeout: Duration = "30s"
    steps: list[SagaStepSpec] = Field(min_length=1)


class ServiceSpec(Strict):
    description: str = ""
    port: Port
    database: Identifier
    prefix: UrlPath
    uses: list[Literal["cache"]] = []
    calls: list[str] = []
    tables: dict[Identifier, TableSpec] = {}
    events: ServiceEventsSpec = ServiceEventsSpec()
    routes: list[RouteSpec] = []
    sagas: dict[Identifier, SagaSpec] = {}
    scaling: ScalingSpec = ScalingSpec()
    probes: ProbesSpec | None = None
    resources: ResourcesSpec | None = None


class Spec(Strict):
    """The whole platform description (`spec/cloudretail.yaml`)."""

    version: Literal[1]
    platform: PlatformSpec
    defaults: DefaultsSpec
    topics: dict[TopicName, TopicSpec] = Field(min_length=1)
    events: dict[EventName, EventSpec] = {}
    auth: AuthSpec | None = None
    gateway: GatewaySpec
    event_bus: EventBusSpec
    services: dict[ServiceName, ServiceSpec] = Field(min_length=1)
