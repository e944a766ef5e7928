"""PostgreSQL over TLS (DATABASE_CA_FILE): verify-full against the given CA, and a server
that cannot speak TLS is refused rather than used in plaintext. Kafka's side is
tests/events/test_kafka_tls.py; the manifests that set both are tests/deploy/test_tls.py."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from runtime.config import ServiceSettings
from runtime.db import Database, tls_connect_args
from tests.runtime.tls_support import write_ca
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
