"""PostgreSQL over TLS (DATABASE_CA_FILE): verify-full against the given CA, and a server
that cannot speak TLS is refused rather than used in plaintext. Redis over TLS
(REDIS_CA_FILE): the cache, the event store and the gateway's rate limit verify a real
TLS-only redis-server against the CA and the host name. Kafka's side is
tests/events/test_kafka_tls.py; the manifests that set them are tests/deploy/test_tls.py."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cloudretail.runtime.app import create_service_app
from cloudretail.runtime.cache import CacheUnavailableError, RedisCache, make_cache
from cloudretail.runtime.config import ServiceSettings
from cloudretail.runtime.db import Database, tls_connect_args
from cloudretail.runtime.eventbus import make_store
from cloudretail.runtime.gateway.config import load_config
from cloudretail.runtime.gateway.resp import RedisConnectionError, RedisPipe
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests.gateway.conftest import ROUTES
from tests.runtime.tls_support import Authority, free_port, running, tls_redis_command, write_ca
from tests.servers import database_dsn, ensure_database


def test_a_ca_file_means_verify_full(tmp_path: Path) -> None:
    ca = write_ca(tmp_path / "ca.crt")
    args = tls_connect_args(make_url("postgresql+asyncpg://app@db-rw:5432/app"), str(ca))
    context = args["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [cert["subject"] for cert in context.get_ca_certs()] == [
        ((("commonName", "test cluster CA"),),)
    ]


def test_without_a_ca_file_or_on_sqlite_nothing_changes(tmp_path: Path) -> None:
    ca = str(write_ca(tmp_path / "ca.crt"))
    assert tls_connect_args(make_url("postgresql+asyncpg://app@db/app"), None) == {}
    assert tls_connect_args(make_url("sqlite+aiosqlite:///x.db"), ca) == {}


def test_the_setting_is_database_ca_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_CA_FILE", "/etc/cloudretail/postgres-ca/ca.crt")
    settings = ServiceSettings(service_name="s", port=3999, database_url="sqlite://")
    assert settings.database_ca_file == "/etc/cloudretail/postgres-ca/ca.crt"


async def test_a_server_without_tls_is_refused_not_used_in_plaintext(tmp_path: Path) -> None:
    """The machine's PostgreSQL speaks plaintext only: with a CA file the client insists on
    TLS and gets no connection (it never falls back)."""
    ensure_database("cloudretail_tls_probe")  # skips, saying why, without PostgreSQL
    url = database_dsn("cloudretail_tls_probe")
    plain = Database(url, pool_size=1)
    try:
        async with plain.engine.connect() as connection:
            assert (await connection.execute(text("SHOW ssl"))).scalar_one() == "off"
    finally:
        await plain.dispose()
    database = Database(url, pool_size=1, ca_file=str(write_ca(tmp_path / "ca.crt")))
    try:
        with pytest.raises(Exception, match=r"(?i)ssl"):
            async with database.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
    finally:
        await database.dispose()


# -- Redis over TLS (REDIS_CA_FILE) ------------------------------------------------------------


@dataclass(frozen=True)
class TlsRedis:
    """A TLS-only redis-server on loopback: its certificate names `localhost`."""

    port: int
    ca_file: Path
    other_ca: Path  # a CA that did not sign it

    @property
    def url(self) -> str:
        return f"rediss://localhost:{self.port}/0"


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    tls = Authority.make().issue(tmp_path / "tls", ["localhost"])
    port = free_port()
    with running(tls_redis_command(tls, port), port):
        yield TlsRedis(port, tls / "ca.crt", write_ca(tmp_path / "other-ca.crt"))


def _settings(redis_url: str, ca_file: Path | None) -> ServiceSettings:
    return ServiceSettings(
        service_name="s",
        port=3999,
        database_url="sqlite+aiosqlite://",
        redis_url=redis_url,
        redis_ca_file=str(ca_file) if ca_file else None,
    )


async def test_the_cache_from_settings_verifies_redis_against_redis_ca_file(
    tls_redis: TlsRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", tls_redis.url)
    monkeypatch.setenv("REDIS_CA_FILE", str(tls_redis.ca_file))
    settings = ServiceSettings(service_name="s", port=3999, database_url="sqlite+aiosqlite://")
    app = create_service_app(settings)
    cache = app.state.cache
    assert isinstance(cache, RedisCache)
    try:
        await cache.set("greeting", "hello", ttl=30)
        assert await cache.get("greeting") == b"hello"
        assert await cache.incr("count") == 1
    finally:
        await cache.close()


async def test_a_redis_the_ca_did_not_sign_is_refused(tls_redis: TlsRedis) -> None:
    settings = _settings(tls_redis.url, tls_redis.other_ca)
    cache = make_cache(settings.redis_url, "s", ca_file=settings.redis_ca_file)
    try:
        assert await cache.ping() is False
        with pytest.raises(CacheUnavailableError, match="certificate verify failed"):
            await cache.incr("count")
    finally:
        await cache.close()


async def test_a_certificate_for_another_host_is_refused(tmp_path: Path) -> None:
    """Verified as a browser verifies a site: the right CA is not enough, the certificate
    must also name the host the URL connects to."""
    tls = Authority.make().issue(tmp_path / "tls", ["redis.elsewhere.svc"])
    port = free_port()
    with running(tls_redis_command(tls, port), port):
        cache = make_cache(f"rediss://localhost:{port}/0", "s", ca_file=str(tls / "ca.crt"))
        try:
            with pytest.raises(CacheUnavailableError, match="Hostname mismatch"):
                await cache.add("claim", "1")
        finally:
            await cache.close()


async def test_the_event_store_verifies_redis_too(tls_redis: TlsRedis) -> None:
    trusted = make_store(_settings(tls_redis.url, tls_redis.ca_file), retention=60)
    untrusted = make_store(_settings(tls_redis.url, tls_redis.other_ca), retention=60)
    try:
        assert await trusted.ping() is True
        assert await untrusted.ping() is False
    finally:
        await trusted.close()
        await untrusted.close()


async def test_the_gateway_rate_limit_store_verifies_redis(tls_redis: TlsRedis) -> None:
    trusted = RedisPipe(tls_redis.url, timeout=2, ca_file=str(tls_redis.ca_file))
    untrusted = RedisPipe(tls_redis.url, timeout=2, ca_file=str(tls_redis.other_ca))
    try:
        assert await trusted.execute("PING") == "PONG"
        with pytest.raises(RedisConnectionError, match="certificate verify failed"):
            await untrusted.execute("PING")
    finally:
        await trusted.close()
        await untrusted.close()


def test_a_ca_file_with_a_plaintext_or_weakened_url_is_refused(tmp_path: Path) -> None:
    ca = write_ca(tmp_path / "ca.crt")
    with pytest.raises(ValidationError, match=r"rediss://"):
        _settings("redis://redis:6379/0", ca)
    with pytest.raises(ValidationError, match="ssl_cert_reqs"):
        _settings("rediss://redis:6379/0?ssl_cert_reqs=none", ca)
    with pytest.raises(ValueError, match=r"rediss://"):
        load_config(ROUTES, env={"REDIS_URL": "redis://redis:6379/0", "REDIS_CA_FILE": str(ca)})
    with pytest.raises(ValueError, match=r"rediss://"):
        RedisPipe("redis://redis:6379/0", ca_file=str(ca))
    assert load_config(
        ROUTES, env={"REDIS_URL": "rediss://redis:6379/0", "REDIS_CA_FILE": str(ca)}
    ).redis_ca_file == str(ca)
    assert _settings("redis://127.0.0.1:6379/0", None).redis_ca_file is None  # local: plaintext
