from __future__ import annotations

import pytest
from cloudretail.runtime.config import (
    DEFAULT_SECRET,
    MissingServiceUrlError,
    ServiceSettings,
    default_database_url,
    load_settings,
)
from pydantic import ValidationError

# What `openssl rand -hex 32` or secrets.token_urlsafe(32) gives: long and random.
STRONG_TOKEN = "3f9c1e7a5b2d4086c8e1f3a7b9d5026e4c8a1f3b5d7e9026"


@pytest.fixture(autouse=True)
def no_bootstrap_admin(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.delenv("CLOUDRETAIL_ADMIN_EMAIL", raising=False)
    clean_env.delenv("CLOUDRETAIL_ADMIN_PASSWORD", raising=False)


def test_defaults_come_from_the_caller_when_the_environment_is_silent(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("SERVICE_TOKEN", "s3cret")
    settings = load_settings("product", 3002, "cloudretail_products")

    assert settings.service_name == "product"
    assert settings.port == 3002
    assert settings.host == "127.0.0.1"
    assert settings.environment == "development"
    assert (
        settings.database_url == "sqlite+aiosqlite:///./.cloudretail/data/cloudretail_products.db"
    )
    assert settings.redis_url is None
    assert settings.kafka_bootstrap_servers is None
    assert settings.jwks_url is None
    assert settings.log_level == "INFO"
    assert settings.service_urls == {}


def test_a_full_url_as_default_database_is_used_as_is(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SERVICE_TOKEN", "s3cret")
    settings = load_settings("order", 3003, "postgresql://db/orders")
    assert settings.database_url == "postgresql://db/orders"


def test_environment_overrides_code_defaults(clean_env: pytest.MonkeyPatch) -> None:
    for name, value in {
        "PORT": "8000",
        "HOST": "0.0.0.0",
        "ENVIRONMENT": "Production",
        "LOG_LEVEL": "debug",
        "DATABASE_URL": "postgresql://app:pw@db:5432/products",
        "REDIS_URL": "redis://cache:6379/0",
        "KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9092,kafka-2:9092",
        "JWT_ISSUER": "https://shop.example",
        "JWT_AUDIENCE": "cloudretail",
        "JWKS_URL": "http://user:3001/api/users/.well-known/jwks.json",
        "SERVICE_TOKEN": STRONG_TOKEN,
        "SERVICE_NAME": "ignored",
    }.items():
        clean_env.setenv(name, value)

    settings = load_settings("product", 3002, "cloudretail_products")

    assert settings.service_name == "product"
    assert settings.port == 8000
    assert settings.host == "0.0.0.0"
    assert settings.environment == "production"
    assert settings.is_production
    assert settings.log_level == "DEBUG"
    assert settings.database_url == "postgresql://app:pw@db:5432/products"
    assert settings.redis_url == "redis://cache:6379/0"
    assert settings.kafka_bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert settings.jwt_issuer == "https://shop.example"
    assert settings.jwt_audience == "cloudretail"
    assert settings.jwks_url == "http://user:3001/api/users/.well-known/jwks.json"
    assert settings.service_token.get_secret_value() == STRONG_TOKEN
    # Own URL settings are not mistaken for services.
    assert settings.service_urls == {}


def test_empty_variables_count_as_unset(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SERVICE_TOKEN", "s3cret")
    clean_env.setenv("REDIS_URL", "")
    clean_env.setenv("DATABASE_URL", "")
    clean_env.setenv("PORT", "")
    settings = load_settings("user", 3001, "cloudretail_users")
    assert settings.redis_url is None
    assert settings.port == 3001
    assert settings.database_url == default_database_url("cloudretail_users")


def test_service_urls_come_from_service_url_variables(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SERVICE_TOKEN", "s3cret")
    clean_env.setenv("INVENTORY_URL", "http://inventory:3004/")
    clean_env.setenv("PAYMENT_URL", "http://payment:3005")
    clean_env.setenv("EVENT_BUS_URL", "http://bus:4000")

    settings = load_settings("order", 3003, "cloudretail_orders")

    assert settings.service_url("inventory") == "http://inventory:3004"
    assert settings.service_url("INVENTORY") == "http://inventory:3004"
    assert settings.service_url("payment") == "http://payment:3005"
    assert settings.service_url("event-bus") == "http://bus:4000"
    assert settings.service_url("product", default="http://127.0.0.1:3002") == (
        "http://127.0.0.1:3002"
    )
    with pytest.raises(MissingServiceUrlError, match="set PRODUCT_URL"):
        settings.service_url("product")


def test_explicit_service_urls_are_normalised() -> None:
    settings = ServiceSettings(
        service_name="order",
        port=3003,
        database_url="sqlite+aiosqlite:///:memory:",
        service_token="s3cret",
        service_urls={"Event-Bus": "http://bus:4000"},
    )
    assert settings.service_url("event-bus") == "http://bus:4000"


def test_invalid_values_are_rejected(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SERVICE_TOKEN", "s3cret")
    clean_env.setenv("PORT", "not-a-port")
    with pytest.raises(ValidationError, match="port"):
        load_settings("user", 3001, "cloudretail_users")
    clean_env.setenv("PORT", "3001")
    clean_env.setenv("ENVIRONMENT", "staging")
    with pytest.raises(ValidationError, match="environment"):
        load_settings("user", 3001, "cloudretail_users")


def test_production_refuses_the_default_service_token(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="SERVICE_TOKEN"):
        load_settings("user", 3001, "cloudretail_users")


def test_production_refuses_the_default_database_password(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ENVIRONMENT", "production")
    clean_env.setenv("SERVICE_TOKEN", STRONG_TOKEN)
    clean_env.setenv("DATABASE_URL", f"postgresql://app:{DEFAULT_SECRET}@db/users")
    with pytest.raises(ValidationError, match="DATABASE_URL password"):
        load_settings("user", 3001, "cloudretail_users")


def test_production_accepts_real_secrets(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ENVIRONMENT", "production")
    clean_env.setenv("SERVICE_TOKEN", STRONG_TOKEN)
    clean_env.setenv("CLOUDRETAIL_ADMIN_PASSWORD", "a long admin passphrase")
    clean_env.setenv("DATABASE_URL", "postgresql://app:long-random@db/users")
    settings = load_settings("user", 3001, "cloudretail_users")
    assert settings.is_production
    assert settings.default_secrets_in_use() == []


def test_development_runs_with_default_secrets_but_lists_them(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("DATABASE_URL", f"postgresql://app:{DEFAULT_SECRET}@db/users")
    settings = load_settings("user", 3001, "cloudretail_users")
    assert settings.service_token.get_secret_value() == DEFAULT_SECRET
    assert settings.default_secrets_in_use() == ["SERVICE_TOKEN", "the DATABASE_URL password"]


def test_production_lists_every_default_secret(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ENVIRONMENT", "production")
    clean_env.setenv("REDIS_URL", f"redis://:{DEFAULT_SECRET}@cache:6379/0")
    with pytest.raises(ValidationError) as caught:
        load_settings("user", 3001, "cloudretail_users")
    assert "SERVICE_TOKEN, the REDIS_URL password" in str(caught.value)


def test_secrets_do_not_show_in_repr() -> None:
    settings = ServiceSettings(
        service_name="user",
        port=3001,
        database_url="sqlite+aiosqlite:///:memory:",
        service_token="very-secret-value",
    )
    assert "very-secret-value" not in repr(settings)


@pytest.mark.parametrize(
    "token",
    [
        "x",
        "s3cret",
        "a-real-token",
        "0123456789abcdef0123456789abcde",  # 31 characters
        "a" * 64,  # long, but one character repeated
        "abab" * 10,
    ],
)
def test_production_refuses_a_weak_service_token(clean_env: pytest.MonkeyPatch, token: str) -> None:
    clean_env.setenv("ENVIRONMENT", "production")
    clean_env.setenv("SERVICE_TOKEN", token)
    with pytest.raises(ValidationError, match="SERVICE_TOKEN") as caught:
        load_settings("user", 3001, "cloudretail_users")
    assert "32 characters" in str(caught.value)


@pytest.mark.parametrize("password", ["a", "admin", "short pass1", "aaaaaaaaaaaaaaaa"])
def test_production_refuses_a_weak_bootstrap_admin_password(
    clean_env: pytest.MonkeyPatch, password: str
) -> None:
    clean_env.setenv("ENVIRONMENT", "production")
    clean_env.setenv("SERVICE_TOKEN", STRONG_TOKEN)
    clean_env.setenv("CLOUDRETAIL_ADMIN_EMAIL", "boss@example.com")
    clean_env.setenv("CLOUDRETAIL_ADMIN_PASSWORD", password)
    with pytest.raises(ValidationError, match="CLOUDRETAIL_ADMIN_PASSWORD") as caught:
        load_settings("user", 3001, "cloudretail_users")
    assert "12 characters" in str(caught.value)


def test_production_names_every_weak_secret(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ENVIRONMENT", "production")
    clean_env.setenv("SERVICE_TOKEN", "x")
    clean_env.setenv("CLOUDRETAIL_ADMIN_PASSWORD", "a")
    with pytest.raises(ValidationError) as caught:
        load_settings("user", 3001, "cloudretail_users")
    assert "SERVICE_TOKEN" in str(caught.value)
    assert "CLOUDRETAIL_ADMIN_PASSWORD" in str(caught.value)


def test_development_runs_with_weak_secrets(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SERVICE_TOKEN", "x")
    clean_env.setenv("CLOUDRETAIL_ADMIN_PASSWORD", "a")
    settings = load_settings("user", 3001, "cloudretail_users")
    assert not settings.is_production
    assert settings.service_token.get_secret_value() == "x"
