"""A service's event machinery, started and stopped with the app: the outbox relay (when a
broker is configured and the service publishes: only then has it an outbox) and the
consumer group (when the service consumes events).

Without KAFKA_BOOTSTRAP_SERVERS events still go into the outbox with the state change that
caused them; nothing sends them until a broker is configured. A broker that is configured
but down makes readiness "degraded" (still 200: requests work, events wait in the outbox),
never "unhealthy".
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from cloudretail.runtime.config import ServiceSettings
from cloudretail.runtime.db import Database
from cloudretail.runtime.events.consumer import EventConsumer, Handler, consumer_topics
from cloudretail.runtime.events.kafka import KafkaProducer, KafkaSource, tls_context
from cloudretail.runtime.events.outbox import OutboxRelay
from cloudretail.runtime.events.registry import EventRegistry
from cloudretail.runtime.metrics import EventMetrics, Metrics
from fastapi import FastAPI

logger = logging.getLogger(__name__)


def kafka_source(settings: ServiceSettings, group: str, topics: list[str]) -> KafkaSource:
    """A consumer-group source. With the embedded broker (not idempotent), a restarted
    broker is a new cluster with empty topics: checking the cluster id makes the consumer
    drop positions from the old one instead of skipping the new one's first messages."""
    assert settings.kafka_bootstrap_servers
    return KafkaSource(
        settings.kafka_bootstrap_servers,
        group,
        topics,
        client_id=group,
        check_cluster_id=not settings.kafka_idempotent,
        tls=tls_context(settings.kafka_ca_file),
    )


class ServiceEvents:
    def __init__(
        self,
        settings: ServiceSettings,
        registry: EventRegistry,
        *,
        handlers: Mapping[str, Handler] | None = None,
        publishes: bool = True,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.handlers = dict(handlers or {})
        self.publishes = publishes
        self.started = False
        self.relay: OutboxRelay | None = None
        self.consumer: EventConsumer | None = None

    async def healthy(self) -> bool:
        """The "eventBus" readiness detail (non-critical: False means degraded, not 503):
        the broker acks our sends and the consumer keeps up."""
        if not self.started:
            return self.settings.kafka_bootstrap_servers is None
        if self.relay is not None and not self.relay.healthy:
            return False
        return self.consumer is None or self.consumer.healthy

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        bootstrap = self.settings.kafka_bootstrap_servers
        if not bootstrap:
            logger.warning("KAFKA_BOOTSTRAP_SERVERS is not set: events stay in the outbox")
            yield
            return
        database: Database = app.state.database
        service = self.settings.service_name
        producer = KafkaProducer(
            bootstrap,
            idempotent=self.settings.kafka_idempotent,
            client_id=service,
            tls=tls_context(self.settings.kafka_ca_file),
        )
        app_metrics: Metrics | None = getattr(app.state, "metrics", None)
        metrics: EventMetrics | None = (
            app_metrics.event_metrics() if app_metrics is not None else None
        )
        tracer = getattr(app.state, "tracer", None)  # create_service_app's
        if self.publishes:
            # The relay also measures the outbox backlog (every 5 s) while it runs.
            self.relay = OutboxRelay(database, producer, metrics=metrics, tracer=tracer)
            await self.relay.start()
        if self.handlers:
            topics = consumer_topics(self.registry, self.handlers)
            self.consumer = EventConsumer(
                database,
                self.registry,
                kafka_source(self.settings, service, topics),
                producer,
                service=service,
                handlers=self.handlers,
                metrics=metrics,
                tracer=tracer,
            )
            await self.consumer.start()
        app.state.events = self
        self.started = True
        try:
            yield
        finally:
            if self.consumer is not None:
                await self.consumer.stop()
            if self.relay is not None:
                await self.relay.stop()
            await producer.stop()
