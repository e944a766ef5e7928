"""Kafka over TLS (KAFKA_CA_FILE): the clients speak TLS and verify the broker (the producer,
the consumer group and its admin client take the same options); the embedded broker speaks
plaintext only, so with TLS the producer does not connect, and without it it does."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cloudretail.runtime.config import ServiceSettings
from cloudretail.runtime.events.broker import EmbeddedBroker
from cloudretail.runtime.events.kafka import KafkaProducer, tls_context, tls_options
from cloudretail.runtime.events.transport import BrokerUnavailable

from tests.runtime.tls_support import write_ca


def test_a_ca_file_means_tls_verified_against_it(tmp_path: Path) -> None:
    context = tls_context(str(write_ca(tmp_path / "ca.crt")))
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert tls_options(context) == {"security_protocol": "SSL", "ssl_context": context}
    assert tls_context(None) is None and tls_options(None) == {}


def test_the_setting_is_kafka_ca_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_CA_FILE", "/etc/cloudretail/kafka-ca/ca.crt")
    settings = ServiceSettings(service_name="s", port=3999, database_url="sqlite://")
    assert settings.kafka_ca_file == "/etc/cloudretail/kafka-ca/ca.crt"


async def test_with_tls_the_clients_do_not_talk_to_a_plaintext_broker(
    embedded_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    tls = tls_context(str(write_ca(tmp_path / "ca.crt")))
    plain = KafkaProducer(embedded_broker.bootstrap_servers, idempotent=False)
    try:
        await plain.start()  # the broker is there
    finally:
        await plain.stop()
    producer = KafkaProducer(
        embedded_broker.bootstrap_servers, idempotent=False, request_timeout_ms=3000, tls=tls
    )
    with pytest.raises(BrokerUnavailable):
        try:
            await producer.start()
        finally:
            await producer.stop()
