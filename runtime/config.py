"""Service settings from the environment (12-factor): code has defaults, deployments override."""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from cloudretail.runtime.crypto import DEVELOPMENT_KEYS
from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

Environment = Literal["development", "production"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

# The placeholder every secret starts with; production refuses to run with it.
DEFAULT_SECRET = "changethis"
# What production asks of a secret: at least this many characters, this many different.
MIN_SERVICE_TOKEN_LENGTH = 32
MIN_SERVICE_TOKEN_DISTINCT = 8
MIN_ADMIN_PASSWORD_LENGTH = 12
MIN_ADMIN_PASSWORD_DISTINCT = 5
DEFAULT_DATA_DIR = "./.cloudretail/data"
# How production's refusal describes each placeholder (a key by its name, never its value).
_PLACEHOLDERS = {
    DEFAULT_SECRET: f'the placeholder value "{DEFAULT_SECRET}"',
    DEVELOPMENT_KEYS: "the key of DEVELOPMENT_KEYS, which anyone can read",
}

# Variables ending in _URL that are this service's own settings, not other services.
_OWN_URL_VARIABLES = frozenset({"DATABASE_URL", "REDIS_URL", "JWKS_URL"})


class MissingServiceUrlError(LookupError):
    """A call to another service whose address nobody configured."""


def service_env_key(service: str) -> str:
    """`inventory` -> `INVENTORY`, `event-bus` -> `EVENT_BUS`: the env var stem for a service."""
    return service.strip().upper().replace("-", "_").replace(".", "_")


def default_database_url(database: str, data_dir: str = DEFAULT_DATA_DIR) -> str:
    """A SQLite file per database, so a laptop runs every service with nothing installed."""
    return f"sqlite+aiosqlite:///{data_dir.rstrip('/')}/{database}.db"


class _ServiceUrlSource(PydanticBaseSettingsSource):
    """Collects `<SERVICE>_URL` variables; their names are open-ended, so no field can list them."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        urls: dict[str, str] = {}
        for key, value in os.environ.items():
            upper = key.upper()
            if upper.endswith("_URL") and upper not in _OWN_URL_VARIABLES and value.strip():
                urls[upper.removesuffix("_URL").lower()] = value.strip()
        return {"service_urls": urls} if urls else {}


class ServiceSettings(BaseSettings):
    """Everything a generated service reads from its environment.

    Arguments given to the constructor win over the environment (handy in tests);
    `load_settings` is the entry point where the environment wins over code defaults.
    """

    model_config = SettingsConfigDict(
        case_sensitive=False,
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
    )

    service_name: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    host: str = "127.0.0.1"
    environment: Environment = "development"
    log_level: LogLevel = "INFO"

    database_url: str
    # PostgreSQL over TLS, verify-full: the server's certificate must chain to this CA and
    # name the host (the cluster's CA, e.g. CloudNativePG's `<cluster>-ca`). Unset: plaintext.
    database_ca_file: str | None = None
    # Connections are kept, not churned: with a small pool and a large overflow, every
    # burst above the pool size opened and closed connections per transaction (a third of
    # an order's inventory transactions paid a new connection). Same ceiling of 15.
    database_pool_size: int = Field(default=15, ge=1)
    database_max_overflow: int = Field(default=0, ge=0)
    # A PgBouncer in transaction mode in front of DATABASE_URL's database, as `host` or
    # `host:port` (the manifests set it where the spec gives the database a `pooler`): the
    # connections go there, with DATABASE_URL's user, password and database, and no prepared
    # statement outlives its transaction (runtime/db.py). Unset: straight to DATABASE_URL.
    database_pooler: str | None = None
    database_echo: bool = False
    # A hung or missing database must cost seconds and end in a 503, never hold requests
    # until the client gives up: waits for a new connection, for a free one from the pool,
    # and for one statement's answer are all bounded (seconds). The statement timeout stays
    # below the gateway's default 10 s, so the caller gets the service's 503, not a 504.
    database_connect_timeout: float = Field(default=3.0, gt=0)
    database_pool_timeout: float = Field(default=5.0, gt=0)
    database_statement_timeout: float = Field(default=8.0, gt=0)

    # Largest request body a service reads; a larger one is answered 413 unread. Generated
    # services default it to the spec's gateway `body_limit`.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1)
    # /docs and /openapi.json: served in development; in production only when this
    # says true. (/metrics is always served: Prometheus scrapes it inside the cluster, and
    # the gateway routes only the spec's routes, never /metrics.)
    docs_enabled: bool | None = None

    # None means in-process fallbacks: a memory cache, no shared state between replicas.
    redis_url: str | None = None
    # Redis over TLS (a rediss:// REDIS_URL), the server's certificate verified against this
    # CA and the URL's host name (cert-manager's issuer CA in the cluster). Unset: rediss://
    # verifies against the system's CAs, redis:// is plaintext, as local Redis speaks.
    redis_ca_file: str | None = None
    kafka_bootstrap_servers: str | None = None
    # Kafka over TLS, the broker's certificate verified against this CA and its host name
    # (Strimzi's `<cluster>-cluster-ca-cert`). Unset: plaintext, as the local broker speaks.
    kafka_ca_file: str | None = None
    # Idempotent producers need InitProducerId, which the embedded broker lacks: on for
    # Kafka (the manifests), off for the local embedded broker.
    kafka_idempotent: bool = True
    # Services that send mail (spec `uses: [mail]`): the SMTP server (smtp:// or smtps://,
    # credentials in the URL) and the From address. Unset: mails wait in the mail outbox.
    smtp_url: str | None = None
    mail_from: str = "no-reply@localhost"

    # Tokens are RS256 JWTs from the spec's token issuer; everyone verifies them with its
    # JWKS. `token_roles`: the roles a token may carry (the spec's `auth.roles`; None: any).
    jwt_issuer: str = "cloudretail"
    jwt_audience: str = "cloudretail"
    jwks_url: str | None = None
    token_roles: tuple[str, ...] | None = None
    # The user service signs tokens: a PEM here or in a file. Without either, development
    # makes a key under .cloudretail/keys/ and production refuses to start.
    jwt_private_key: SecretStr | None = None
    jwt_private_key_file: str | None = None
    access_token_ttl: int = Field(default=3600, ge=60)
    # Shared secret for `auth: service` routes between services.
    service_token: SecretStr = SecretStr(DEFAULT_SECRET)
    # The key ring of columns stored encrypted (runtime/crypto.py): `id:base64key` entries,
    # comma-separated, the first one writing. Only services that store encrypted columns
    # need it, and refuse to start without it. Development setups may use the well-known
    # DEVELOPMENT_KEYS; production refuses its key, in any entry, like the other placeholders.
    encryption_keys: SecretStr | None = None
    # The platform's first administrator, made at start-up by the service that keeps the
    # accounts when both are set (CLOUDRETAIL_ADMIN_EMAIL / CLOUDRETAIL_ADMIN_PASSWORD).
    cloudretail_admin_email: str | None = None
    cloudretail_admin_password: SecretStr | None = None

    health_check_timeout: float = Field(default=2.0, gt=0)
    shutdown_timeout: float = Field(default=10.0, ge=0)
    # Seconds between the stop signal and closing the socket, readiness saying 503
    # meanwhile (runtime/serve.py). Kubernetes' preStop pause does this job there.
    shutdown_drain: float = Field(default=0.0, ge=0)

    # Filled from `<SERVICE>_URL` variables; keys are lower-case service names.
    service_urls: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            file_secret_settings,
            _ServiceUrlSource(settings_cls),
        )

    @field_validator("environment", "log_level", mode="before")
    @classmethod
    def _normalise_case(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        return value.strip().upper() if info.field_name == "log_level" else value.strip().lower()

    @field_validator("service_urls", mode="after")
    @classmethod
    def _normalise_service_keys(cls, value: dict[str, str]) -> dict[str, str]:
        return {service_env_key(name).lower(): url for name, url in value.items()}

    @field_validator("database_pooler", mode="after")
    @classmethod
    def _check_pooler(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?", value):
            raise ValueError(f"must be host or host:port (a PgBouncer), not {value!r}")
        return value

    @field_validator("smtp_url", mode="after")
    @classmethod
    def _check_smtp_url(cls, value: str | None) -> str | None:
        if value:
            from cloudretail.runtime.mail import (
                SmtpServer,  # the mail module is only needed when set
            )

            SmtpServer.from_url(value)  # a ValueError names what is wrong
        return value or None

    @model_validator(mode="after")
    def _check_redis_tls(self) -> ServiceSettings:
        if self.redis_ca_file:
            from cloudretail.runtime.cache import check_redis_tls  # only needed with a CA file

            check_redis_tls(self.redis_url, self.redis_ca_file)  # a ValueError says what
        return self

    @model_validator(mode="after")
    def _refuse_weak_secrets(self) -> ServiceSettings:
        if self.environment != "production":
            return self
        problems = self._placeholder_problems() + self.weak_secrets()
        if problems:
            raise ValueError("; ".join(problems) + "; set real secrets before deploying")
        return self

    def default_secrets_in_use(self) -> list[str]:
        """Secrets still at the placeholder; development runs with them, production refuses."""
        return list(self._kept_placeholders())

    def _kept_placeholders(self) -> dict[str, str]:
        """The secrets still at their placeholder, each with that placeholder."""
        passwords = {
            "SERVICE_TOKEN": self.service_token.get_secret_value(),
            "the DATABASE_URL password": _url_password(self.database_url),
            "the REDIS_URL password": _url_password(self.redis_url),
        }
        kept = {
            name: DEFAULT_SECRET for name, value in passwords.items() if value == DEFAULT_SECRET
        }
        keys = self.encryption_keys
        if keys is not None and _holds_development_key(keys.get_secret_value()):
            kept["ENCRYPTION_KEYS"] = DEVELOPMENT_KEYS
        return kept

    def _placeholder_problems(self) -> list[str]:
        kept = self._kept_placeholders()
        problems = []
        for placeholder, description in _PLACEHOLDERS.items():
            names = [name for name, value in kept.items() if value == placeholder]
            if names:
                verb = "has" if len(names) == 1 else "have"
                problems.append(f"{', '.join(names)} still {verb} {description}")
        return problems

    def weak_secrets(self) -> list[str]:
        """Why each set secret is too weak for production (placeholders are reported apart)."""
        checks = [
            (
                "SERVICE_TOKEN",
                self.service_token,
                MIN_SERVICE_TOKEN_LENGTH,
                MIN_SERVICE_TOKEN_DISTINCT,
                " (e.g. `openssl rand -hex 32`)",
            ),
            (
                "CLOUDRETAIL_ADMIN_PASSWORD",
                self.cloudretail_admin_password,
                MIN_ADMIN_PASSWORD_LENGTH,
                MIN_ADMIN_PASSWORD_DISTINCT,
                "",
            ),
        ]
        found = []
        for name, secret, length, distinct, hint in checks:
            value = secret.get_secret_value() if secret is not None else None
            if value is None or value == DEFAULT_SECRET:
                continue
            reason = secret_weakness(value, length, distinct)
            if reason is not None:
                found.append(
                    f"{name} is too weak ({reason}): use at least {length} characters, "
                    f"{distinct} or more of them different{hint}"
                )
        return found

    @property
    def is_production(self) -> bool:
        return self.environment == "production"

    @property
    def serves_docs(self) -> bool:
        """API docs and the OpenAPI document: on in development, opt-in in production."""
        return self.docs_enabled if self.docs_enabled is not None else not self.is_production

    def service_url(self, service: str, default: str | None = None) -> str:
        """Base URL of another service, from `<SERVICE>_URL` (e.g. INVENTORY_URL)."""
        found = self.service_urls.get(service_env_key(service).lower())
        if found is not None:
            return found.rstrip("/")
        if default is not None:
            return default.rstrip("/")
        raise MissingServiceUrlError(
            f"no URL configured for service {service!r}: set {service_env_key(service)}_URL"
        )


def secret_weakness(value: str, min_length: int, min_distinct: int) -> str | None:
    """Why `value` is too weak to guard production, or None: too short, or too repetitive
    (a few characters repeated: little entropy whatever the length)."""
    if len(value) < min_length:
        return f"{len(value)} character{'' if len(value) == 1 else 's'} long"
    distinct = len(set(value))
    if distinct < min_distinct:
        return f"only {distinct} different character{'' if distinct == 1 else 's'}"
    return None


def _holds_development_key(ring: str) -> bool:
    """True when any entry of the ring has DEVELOPMENT_KEYS' key, whatever its id: a key
    everyone knows, which would let anyone forge values even in a decrypt-only entry."""
    development_key = DEVELOPMENT_KEYS.partition(":")[2]
    return any(entry.strip().partition(":")[2] == development_key for entry in ring.split(","))


def _url_password(url: str | None) -> str | None:
    if not url:
        return None
    try:
        return make_url(url).password
    except ArgumentError:
        # Not a URL SQLAlchemy can parse (e.g. some redis forms): nothing to check here.
        return None


def load_settings(
    service_name: str, port: int, default_database: str, **code_defaults: Any
) -> ServiceSettings:
    """Settings for one service: environment first, then the defaults generated into the code.

    `default_database` is either a full URL or a bare database name, which becomes a SQLite
    file under `.cloudretail/data/`. `code_defaults` are other settings the generated code
    knows from the spec (e.g. `max_body_bytes`); the environment still overrides them.
    """
    database_url = (
        default_database if "://" in default_database else default_database_url(default_database)
    )
    defaults: dict[str, Any] = {**code_defaults, "port": port, "database_url": database_url}
    present = {key.lower() for key, value in os.environ.items() if value.strip()}
    # Constructor arguments outrank the environment, so pass only what the environment lacks;
    # the service name is the code's identity and never comes from the environment.
    given = {key: value for key, value in defaults.items() if key not in present}
    return ServiceSettings(service_name=service_name, **given)
