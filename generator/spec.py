"""The spec's input schema: pydantic models that mirror spec/cloudretail.yaml one to one.

Nothing here is resolved or defaulted beyond what the YAML says; `cloudretail.generator.model` does
that. Unknown keys are refused everywhere (`extra="forbid"`), so a typo never passes
silently.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from cloudretail.generator.auth_rules import rule_names
from cloudretail.generator.choices import Matching, OneOf
from cloudretail.generator.kinds import KINDS
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

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


K8sName = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
]


class IngressSpec(Strict):
    """The ingress-nginx controller in front of the gateway; its TLS settings are its own."""

    class_name: K8sName = "nginx"  # the IngressClass the gateway's Ingress names
    namespace: K8sName = "ingress-nginx"  # where the controller's pods run
    # The controller's ConfigMap: `<Helm release>-controller` (the static manifests' name too).
    config_map: K8sName = "ingress-nginx-controller"


class CertificatesSpec(Strict):
    """The cert-manager issuer of the platform's in-cluster server certificates (Redis)."""

    issuer: K8sName = "cluster-ca"
    issuer_kind: Literal["ClusterIssuer", "Issuer"] = "ClusterIssuer"


class PlatformSpec(Strict):
    name: Identifier
    namespace: Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
    registry: str
    domain: str
    cors_origins: list[str] = []
    # Where the prod overlay's Secrets come from; plain Secrets (secrets.example.env) when
    # not given, and always in the dev overlay.
    secrets: SecretsSpec = SecretsSpec()
    ingress: IngressSpec = IngressSpec()
    certificates: CertificatesSpec = CertificatesSpec()


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
    # GDPR: what erasing the table's `subject` does to this column (generator/model.py and
    # runtime/personal_data.py apply it; README "Personal data" tells the whole story).
    pii: Literal["erase", "anonymise", "keep"] | None = Field(
        default=None,
        description=(
            "Personal data, and what erasing its subject (the table's `subject`) does to it: "
            "`erase` removes the value (NULL; a non-nullable column writes its `replacement`), "
            "`anonymise` writes a fixed value that identifies nobody (the `replacement`, or "
            "the kind's own: the nil UUID for a `uuid`), `keep` keeps it on purpose (amounts, "
            "statuses, provider references that accounting law requires) and says so. "
            "Without `pii` the column is not personal data and erasure leaves it alone. Every "
            "column but a `secret` one is in the subject's export."
        ),
    )
    pii_keys: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] | None = Field(
        default=None,
        min_length=1,
        description=(
            "`json` columns with `pii: erase` or `anonymise`: only these keys of the "
            "stored object are erased (set to null) or anonymised (set to the "
            "`replacement`); its other keys stay (a country kept for tax, say). Without it "
            "the whole value goes."
        ),
    )
    replacement: bool | int | float | str | None = Field(
        default=None,
        description=(
            "The value `pii: erase` writes in a non-nullable column, or `pii: anonymise` "
            "writes instead of the kind's own fixed value: a literal of the column's kind "
            "(one of an enum's `values`, within a string's `length`)."
        ),
    )


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
    subject: Identifier | None = Field(
        default=None,
        description=(
            "GDPR: the `uuid` column naming the person (the data subject) each row is about; "
            "the platform's `gdpr.erasure_event` erases the rows of the subject it names and "
            "the export gathers them. With `subject_through`, the column holds the key of a "
            "row of that table instead, whose subject the row has."
        ),
    )
    subject_through: Identifier | None = Field(
        default=None,
        description=(
            "A table of the same service that names its `subject` itself: this table's "
            "`subject` column holds the primary key of one of its rows (the history entries "
            "of a record belong to the record's subject)."
        ),
    )
    erasure: Literal["columns", "delete"] = Field(
        default="columns",
        description=(
            "How the subject's rows are erased: `columns` keeps the rows and applies each "
            "column's `pii`, so the `subject` column must be `anonymise` or `erase`; "
            "`delete` deletes the rows (a table that is nothing but the person's data), so "
            "a column's `pii` can only say `erase`."
        ),
    )


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
    # `cache`: Redis (REDIS_URL) for cached reads and shared counters. `mail`: the service
    # queues mails in its database (`cloudretail.runtime.mail.queue_mail`), sent over SMTP_URL
    # after commit.
    uses: list[Literal["cache", "mail"]] = []
    calls: list[str] = []
    tables: dict[Identifier, TableSpec] = {}
    events: ServiceEventsSpec = ServiceEventsSpec()
    routes: list[RouteSpec] = []
    sagas: dict[Identifier, SagaSpec] = {}
    scaling: ScalingSpec = ScalingSpec()
    probes: ProbesSpec | None = None
    resources: ResourcesSpec | None = None


class GdprSpec(Strict):
    """Which event erases a data subject everywhere, and which of its fields names them.

    The service that publishes `erasure_event` owns the subjects: it erases its own tables
    when it publishes the event, and gathers a subject's export from every service holding
    tables with a `subject` (it calls them; the spec need not list those calls). Every other
    such service consumes the event and applies its columns' `pii`.
    """

    erasure_event: EventName = Field(
        description='The event meaning "erase this subject" (an account deleted, say).'
    )
    subject_key: Identifier = Field(
        description="The erasure event's `uuid` payload field naming the subject."
    )


class LoadTestAccountSpec(Strict):
    """How a virtual user of the load test gets a token: it signs up, then logs in."""

    signup: UrlPath = Field(
        description="The token issuer's public POST route that creates an account."
    )
    login: UrlPath = Field(description="The token issuer's public POST route that answers a token.")
    token: Identifier = Field(
        default="access_token", description="The field of the login answer that holds the token."
    )


LoadWeight = Annotated[int, Field(ge=0, le=1000)]


class LoadTestSpec(Strict):
    """The load test, `generated/loadtest/artillery.yaml` (Artillery).

    Virtual users arrive at `arrival_rate` per second for `duration`; each runs one journey,
    drawn by `weights`. The journeys come from the routes: `browse` reads every table's
    public list (and get) route; `register` signs up and logs in (`account`); a saga route
    gets a journey named after its saga (sign up and log in when it needs a token, pick the
    rows its body names while browsing, start it, read the result back). The run fails when
    its p95 or p99 response time is above `p95` / `p99`, or more than `max_error_ratio` of
    the journeys fail (an answer other than the route's success status, or no answer).
    """

    duration: Duration = Field(default="60s", description="How long virtual users arrive.")
    arrival_rate: int = Field(
        default=2, ge=1, le=10_000, description="New virtual users per second."
    )
    p95: Duration = Field(default="500ms", description="Ceiling of the p95 response time.")
    p99: Duration = Field(default="1s", description="Ceiling of the p99 response time.")
    max_error_ratio: float = Field(
        default=0.01, ge=0, le=1, description="Largest share of journeys that may fail."
    )
    weights: dict[Identifier, LoadWeight] = Field(
        default={},
        description="Relative weight of each journey (`browse`, `register`, a saga's name); "
        "1 when not given, 0 leaves a journey out.",
    )
    account: LoadTestAccountSpec | None = Field(
        default=None,
        description="Sign-up and login routes; without them, journeys that need a token are "
        "left out.",
    )
    bodies: dict[ClassName, dict[str, Any]] = Field(
        default={},
        description="A request body for each route `body:` model a journey sends. In its "
        "strings, `{unique}` is a value unique to the virtual user and `{<row>}` the key of a "
        "row it picked while browsing (`{item}` for a table `items`).",
    )


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
    gdpr: GdprSpec | None = Field(
        default=None,
        description=(
            "GDPR erasure and export across services; needed once a table names a `subject`."
        ),
    )
    load_test: LoadTestSpec | None = Field(
        default=None,
        description="The load test's journeys and thresholds; no load test without it.",
    )
