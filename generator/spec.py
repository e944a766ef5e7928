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
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

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
    kinds = "|".join(_payload_kinds())
    return rf"^({kinds})( \| null)?$"


def _payload_kinds() -> list[str]:
    return [name for name, kind in KINDS.items() if kind.payload]


PayloadType = Annotated[str, Matching(_payload_pattern, _payload_kinds)]


class Strict(BaseModel):
    # A field's docstring (the string under it) is its description in the JSON schema, the
    # text an editor shows for the key (`cloudretail schema`).
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def _single_column(value: Any) -> Any:
    """`indexes: [email]` is shorthand for `indexes: [{columns: [email]}]`."""
    return {"columns": [value]} if isinstance(value, str) else value


class ScalingSpec(Strict):
    """How many instances of a deployable run; what it does not say comes from
    `defaults.scaling`."""

    min: int | None = Field(default=None, ge=0)
    """Fewest instances (the HorizontalPodAutoscaler's minReplicas)."""
    max: int | None = Field(default=None, ge=1)
    """Most instances (the HorizontalPodAutoscaler's maxReplicas)."""
    cpu: Percent | None = None
    """Average CPU use, in percent of the request, that adds an instance (1..100)."""
    memory: Percent | None = None
    """Average memory use, in percent of the request, that adds an instance (1..100)."""


class ScalingDefaults(Strict):
    """The scaling of every deployable that does not give its own."""

    min: int = Field(ge=0)
    """Fewest instances of each deployable."""
    max: int = Field(ge=1)
    """Most instances of each deployable."""
    cpu: Percent
    """Average CPU use, in percent of the request, that adds an instance (1..100)."""
    memory: Percent
    """Average memory use, in percent of the request, that adds an instance (1..100)."""


class ProbeSpec(Strict):
    """A Kubernetes HTTP probe of a deployable."""

    path: UrlPath
    """The path the probe GETs."""
    initial_delay: int = Field(ge=0)
    """Seconds after the container starts before the first probe."""
    period: int = Field(ge=1)
    """Seconds between probes."""
    timeout: int = Field(ge=1)
    """Seconds a probe waits for the answer."""
    failures: int = Field(ge=1)
    """Failed probes in a row that count as down."""


class ProbesSpec(Strict):
    """The liveness and readiness probes of a deployable."""

    liveness: ProbeSpec
    """Restarts the container when it fails."""
    readiness: ProbeSpec
    """Takes the instance out of the load balancer while it fails."""


class ResourceAmounts(Strict):
    """CPU and memory in Kubernetes quantities."""

    cpu: Quantity
    """CPU, e.g. `100m` (a tenth of a core) or `1`."""
    memory: Quantity
    """Memory, e.g. `128Mi` or `1Gi`."""


class ResourcesSpec(Strict):
    """A container's resource requests and limits."""

    requests: ResourceAmounts
    """What the scheduler reserves for the container."""
    limits: ResourceAmounts
    """The most the container may use."""


class PoolerSpec(Strict):
    """A PgBouncer in front of a database (a CloudNativePG `Pooler`, transaction mode): the
    services' connections are multiplexed onto a few server connections, so the replicas an
    HPA adds cost PgBouncer clients, not PostgreSQL backends."""

    instances: int = Field(default=2, ge=1, le=20)
    """PgBouncer pods (two or more: a drain or a crash leaves one serving)."""
    pool_size: int = Field(default=20, ge=1, le=1000)
    """Server connections each PgBouncer pod opens to PostgreSQL (`default_pool_size`)."""
    max_client_connections: int = Field(default=1000, ge=1, le=100_000)
    """Client connections each PgBouncer pod accepts (`max_client_conn`)."""


class DatabaseDefaults(Strict):
    """The PostgreSQL settings of every database that gives none of its own."""

    max_connections: int = Field(default=100, ge=10, le=10_000)
    """PostgreSQL's `max_connections` (its default is 100)."""
    pooler: PoolerSpec | None = None
    """A PgBouncer in front of each database; none: the services connect directly."""


class DatabaseSpec(Strict):
    """One database's PostgreSQL settings; what it does not say comes from
    `defaults.database`."""

    max_connections: int | None = Field(default=None, ge=10, le=10_000)
    """PostgreSQL's `max_connections`."""
    pooler: PoolerSpec | None = None
    """A PgBouncer in front of this database."""


class DefaultsSpec(Strict):
    """What every deployable has unless it says otherwise."""

    scaling: ScalingDefaults
    """Instances and autoscaling targets."""
    probes: ProbesSpec
    """Liveness and readiness probes."""
    resources: ResourcesSpec
    """CPU and memory requests and limits."""
    database: DatabaseDefaults = DatabaseDefaults()
    """PostgreSQL's settings (and a connection pooler) of every database."""


class VaultSpec(Strict):
    """HashiCorp Vault, read by the External Secrets Operator with Kubernetes auth."""

    server: Annotated[str, StringConstraints(pattern=r"^https://[^\s/]+(:[0-9]+)?/?$")]
    """Vault's address (https)."""
    path: str = "secret"
    """The KV secrets engine's mount."""
    version: Literal["v1", "v2"] = "v2"
    """The KV secrets engine's version."""
    auth_mount: str = "kubernetes"
    """Where Vault's Kubernetes auth method is mounted."""
    role: str
    """The Vault role bound to the platform's service account."""
    prefix: str | None = None
    """Where the platform's secrets live in the mount (default: the platform's name)."""


class SecretsSpec(Strict):
    """Where the production Secrets come from."""

    vault: VaultSpec | None = None
    """HashiCorp Vault; without it, plain Secrets (secrets.example.env)."""


K8sName = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
]


class IngressSpec(Strict):
    """The ingress-nginx controller in front of the gateway; its TLS settings are its own."""

    class_name: K8sName = "nginx"
    """The IngressClass the gateway's Ingress names."""
    namespace: K8sName = "ingress-nginx"
    """Where the controller's pods run."""
    config_map: K8sName = "ingress-nginx-controller"
    """The controller's ConfigMap: `<Helm release>-controller` (the static manifests' name
    too)."""


class CertificatesSpec(Strict):
    """The cert-manager issuer of the platform's in-cluster server certificates (Redis)."""

    issuer: K8sName = "cluster-ca"
    """The cert-manager issuer's name."""
    issuer_kind: Literal["ClusterIssuer", "Issuer"] = "ClusterIssuer"
    """Whether it is a ClusterIssuer or a namespaced Issuer."""


class PlatformSpec(Strict):
    """The platform as a whole: its name and where it is deployed."""

    name: Identifier
    """The platform's name: tokens' `iss` and `aud`, the default event bus database."""
    namespace: Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
    """The Kubernetes namespace it is deployed into."""
    registry: str
    """The container registry its images are pushed to."""
    domain: str
    """The public domain of its API (the gateway's Ingress host)."""
    cors_origins: list[str] = []
    """Browser origins the gateway allows (CORS)."""
    secrets: SecretsSpec = SecretsSpec()
    """Where the prod overlay's Secrets come from; plain Secrets (secrets.example.env) when
    not given, and always in the dev overlay."""
    ingress: IngressSpec = IngressSpec()
    """The ingress-nginx controller in front of the gateway."""
    certificates: CertificatesSpec = CertificatesSpec()
    """The cert-manager issuer of in-cluster server certificates."""


class TopicSpec(Strict):
    """A Kafka topic and the events it carries."""

    description: str = ""
    """What the topic carries (one line)."""
    partitions: int = Field(ge=1, le=10_000)
    """Partitions: how many consumers of a group can read in parallel."""
    replication: int = Field(default=3, ge=1, le=10)
    """Copies of each partition on the brokers."""
    retention: Duration
    """How long events are kept, e.g. `7d`."""
    cleanup_policy: Literal["delete", "compact"] = "delete"
    """`delete` drops old events, `compact` keeps the newest per key."""
    events: list[str] = Field(min_length=1)
    """The events published to this topic: names or patterns such as `order.*`."""


class EventSpec(Strict):
    """An event type: its Kafka key and its payload's fields."""

    description: str = ""
    """What the event means (one line)."""
    version: str = "1"
    """The payload's schema version, carried in the envelope."""
    key: Identifier
    """The payload field that is the Kafka message key (one key's events stay ordered)."""
    payload: dict[Identifier, PayloadType] = Field(min_length=1)
    """Field name to type: a column kind events may carry, `| null` when optional."""


class RateLimitSpec(Strict):
    """How many requests a client may make in a window."""

    requests: int = Field(ge=1)
    """Requests allowed per window."""
    per: Duration
    """The window, e.g. `1m`."""


class CircuitBreakerSpec(Strict):
    """When the gateway stops calling an upstream that keeps failing."""

    failures: int = Field(ge=1)
    """Failures in a row that open the circuit."""
    reset: Duration
    """How long it stays open before trying again."""


class GatewayRouteSpec(Strict):
    """A gateway route to an upstream that is not a spec service's own route (the event bus)."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    """The HTTP method."""
    path: UrlPath
    """The path, within the upstream's prefix; `{name}` for a path parameter."""
    upstream: str
    """Where it goes: a service's name or `event_bus`."""
    auth: GatewayAuthName
    """Who may call it: an auth rule the gateway enforces."""
    roles: list[Identifier] | None = None
    """With `auth: authenticated`, the roles (of `auth.roles`) allowed."""
    description: str = ""
    """What the route does (one line; in the OpenAPI document)."""


class GatewaySpec(Strict):
    """The API gateway: the platform's one public entry point."""

    port: Port
    """Its port (locally, and inside the cluster)."""
    rate_limit: RateLimitSpec
    """Requests per client per window."""
    body_limit: ByteSize = "1MiB"
    """The largest request body it accepts, e.g. `1MiB`."""
    timeout: Duration = "10s"
    """How long it waits for an upstream's answer."""
    circuit_breaker: CircuitBreakerSpec = CircuitBreakerSpec(failures=5, reset="30s")
    """When it stops calling a failing upstream."""
    routes: list[GatewayRouteSpec] = []
    """Routes to upstreams that are not a service's own routes (the event bus)."""
    scaling: ScalingSpec = ScalingSpec()
    """Its instances (the rest from `defaults.scaling`)."""
    resources: ResourcesSpec | None = None
    """Its CPU and memory (default: `defaults.resources`)."""


class AuthSpec(Strict):
    """Who signs the platform's tokens, where its keys are, and the roles a token may carry.

    `issuer` names the spec's service that signs them, and `jwks` its public GET route that
    serves the keys; without `issuer`, an outside identity provider signs them and `jwks` is
    the full URL of its keys.
    """

    issuer: ServiceName | None = None
    """The spec's service that signs the tokens; none: an outside identity provider."""
    jwks: Annotated[str, StringConstraints(pattern=r"^(/|https?://)[^\s]*$", max_length=500)]
    """The issuer's public GET route serving its keys, or the full URL of the provider's."""
    roles: list[Identifier] = Field(min_length=1)
    """The roles a token may carry."""


class EventBusSpec(Strict):
    """The event bus: the store of every event and its admin API."""

    port: Port
    """Its port (locally, and inside the cluster)."""
    prefix: UrlPath = "/api/events"
    """Where the gateway routes to it."""
    database: Identifier | None = None
    """Its database (default: `<platform name>_events`)."""
    store_retention: Duration = "7d"
    """How long it keeps events."""
    scaling: ScalingSpec = ScalingSpec()
    """Its instances (the rest from `defaults.scaling`)."""
    resources: ResourcesSpec | None = None
    """Its CPU and memory (default: `defaults.resources`)."""


class ColumnSpec(Strict):
    """A column of a table."""

    type: ColumnType
    """The column's kind (`uuid`, `string`, `decimal`, ...)."""
    description: str = ""
    """What the column holds (one line; in the docs and the API schema)."""
    length: int | None = Field(default=None, ge=1, le=10_485_760)
    """Most characters (`string`, `enum`)."""
    precision: int | None = Field(default=None, ge=1, le=1000)
    """Total digits (`decimal`)."""
    scale: int | None = Field(default=None, ge=0, le=1000)
    """Digits after the point (`decimal`)."""
    values: list[str] | None = None
    """The allowed values (`enum`)."""
    primary_key: bool = False
    """The row's key (exactly one column per table)."""
    unique: bool = False
    """No two rows have the same value."""
    nullable: bool = True
    """May be empty (NULL)."""
    default: bool | int | float | str | None = None
    """The value a new row gets: a literal, or `now` / `gen_random_uuid`."""
    on_update: Literal["now"] | None = None
    """`now`: set to the current time on every update (`timestamp`)."""
    check: (
        Annotated[str, StringConstraints(pattern=r"^(>=|<=|>|<|=|!=)\s*-?[0-9]+(\.[0-9]+)?$")]
        | None
    ) = None
    """A CHECK constraint on a number, e.g. `>= 0`."""
    secret: bool = False
    """Never in an API response, never filtered or sorted on (a password hash)."""
    encrypted: bool = False
    """Stored with AES-256-GCM under the platform's key ring (ENCRYPTION_KEYS); the API
    sees plaintext. Such a column cannot be searched, sorted, indexed or unique."""
    renamed_from: Identifier | None = None
    """The column's old name: the migration renames it instead of dropping it."""
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
    """A database index of a table."""

    name: Identifier | None = None
    """Its name (default: `idx_<table>_<columns>`)."""
    columns: list[str] = Field(min_length=1)
    """The indexed columns, in order."""
    unique: bool = False
    """No two rows have the same values in these columns."""


class FilterSpec(Strict):
    """A query parameter of the table's list route."""

    name: Identifier
    """The query parameter's name."""
    op: Literal["eq", "ge", "le", "gt", "lt", "search"]
    """How it compares: equal, at least, at most, above, below, or a text `search`."""
    column: str | None = None
    """The column it compares (not for `search`)."""
    columns: list[str] | None = None
    """The columns a `search` looks in."""


class CacheSpec(Strict):
    """Cached reads of a table (Redis, with `uses: [cache]`)."""

    ttl: Duration
    """How long a read is cached."""


class TableSpec(Strict):
    """A table of the service's database, and its CRUD API's options."""

    description: str = ""
    """What the table holds (one line)."""
    columns: dict[Identifier, ColumnSpec] = Field(min_length=1)
    """The columns by name."""
    indexes: list[
        Annotated[
            IndexSpec, BeforeValidator(_single_column, json_schema_input_type=str | IndexSpec)
        ]
    ] = []
    """Indexes: a column's name, or `{name, columns, unique}`."""
    filters: list[FilterSpec] = []
    """Query parameters of the list route."""
    sort: list[str] = []
    """Columns the list route may sort by."""
    cache: CacheSpec | None = None
    """Cache reads of this table."""
    allow_destructive: bool = False
    """Allow a migration that loses data (a dropped column or table)."""
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
    """The events a service publishes and consumes."""

    publishes: list[str] = []
    """Events it publishes (each by one service only), through its outbox."""
    consumes: list[str] = []
    """Events it handles (`on_<event>` in handlers/<service>.py)."""


class RouteSpec(Strict):
    """An HTTP route of a service: CRUD on a table, or a hand-written handler."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    """The HTTP method."""
    path: UrlPath
    """The path, within the service's prefix; `{name}` for a path parameter."""
    auth: AuthName
    """Who may call it: `public`, `authenticated`, `admin`, `service`, ..."""
    roles: list[Identifier] | None = None
    """With `auth: authenticated`, the roles (of `auth.roles`) allowed."""
    name: Identifier | None = None
    """Its name, for other services' `calls` and saga steps (`<service>.<name>`)."""
    handler: Identifier | None = None
    """The function in handlers/<service>.py that answers it."""
    crud: str | None = None
    """`<table>.<operation>`: list, get, create, replace, update or delete."""
    saga: Identifier | None = None
    """The service's saga this route starts."""
    description: str = ""
    """What the route does (one line; in the OpenAPI document)."""
    body: ClassName | None = None
    """Handler routes: the pydantic model in handlers/<service>.py the handler reads with
    `ctx.body(Model)` (in the OpenAPI document)."""
    status: SuccessStatus | None = None
    """Handler routes: the status it answers with on success."""
    errors: list[ErrorStatus] = []
    """The problem statuses it may answer with besides those every route of its shape
    can give."""


class SagaStepSpec(Strict):
    """A step of a saga: a call to another service, and what undoes it."""

    name: Identifier
    """The step's name."""
    call: str
    """`<service>.<route name>`: the call the step makes."""
    compensate: str | None = None
    """`<service>.<route name>`: the call that undoes it when a later step fails."""


class SagaSpec(Strict):
    """A saga: steps across services, undone in reverse when one fails."""

    timeout: Duration = "30s"
    """How long the whole saga may take."""
    steps: list[SagaStepSpec] = Field(min_length=1)
    """The steps, in order."""


class ServiceSpec(Strict):
    """A service: its database, API, events and sagas."""

    description: str = ""
    """What the service does (one line)."""
    port: Port
    """Its port (locally, and inside the cluster)."""
    database: Identifier
    """Its own database (one per service)."""
    prefix: UrlPath
    """The path prefix the gateway routes to it, e.g. `/api/orders`."""
    uses: list[Literal["cache", "mail"]] = []
    """`cache`: Redis (REDIS_URL) for cached reads and shared counters. `mail`: the service
    queues mails in its database (`cloudretail.runtime.mail.queue_mail`), sent over
    SMTP_URL after commit."""
    calls: list[str] = []
    """The services it calls: the only service-to-service edges allowed."""
    tables: dict[Identifier, TableSpec] = {}
    """Its tables by name."""
    events: ServiceEventsSpec = ServiceEventsSpec()
    """The events it publishes and consumes."""
    routes: list[RouteSpec] = []
    """Its HTTP routes."""
    sagas: dict[Identifier, SagaSpec] = {}
    """Its sagas by name."""
    scaling: ScalingSpec = ScalingSpec()
    """Its instances (the rest from `defaults.scaling`)."""
    probes: ProbesSpec | None = None
    """Its probes (default: `defaults.probes`)."""
    resources: ResourcesSpec | None = None
    """Its CPU and memory (default: `defaults.resources`)."""


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
    """The spec format's version: 1."""
    platform: PlatformSpec
    """The platform's name and where it is deployed."""
    defaults: DefaultsSpec
    """Scaling, probes and resources of every deployable that gives none."""
    topics: dict[TopicName, TopicSpec] = Field(min_length=1)
    """Kafka topics by name."""
    events: dict[EventName, EventSpec] = {}
    """Event types by name (`<entity>.<what happened>`)."""
    auth: AuthSpec | None = None
    """Who signs the platform's tokens and the roles they carry."""
    gateway: GatewaySpec
    """The API gateway."""
    event_bus: EventBusSpec
    """The event bus."""
    services: dict[ServiceName, ServiceSpec] = Field(min_length=1)
    """The services by name."""
    databases: dict[Identifier, DatabaseSpec] = {}
    """PostgreSQL settings of a database (named as a service's `database`, or the event
    bus's), where it differs from `defaults.database`."""
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
