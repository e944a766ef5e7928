"""The Kafka transport: `Producer` and `Source` over aiokafka's public API.

The one reach past it, a forced metadata refresh of a producer, is `_refresh_producer_metadata`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError, UnknownError
from aiokafka.helpers import create_ssl_context
from cloudretail.runtime.events.transport import (
    BatchSender,
    BrokerUnavailable,
    CommitFailed,
    Message,
    OutgoingMessage,
    TopicPartitionKey,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

logger = logging.getLogger(__name__)


class KafkaSettings(BaseSettings):
    """The event bus settings a service reads from its environment."""

    model_config = SettingsConfigDict(
        case_sensitive=False, env_ignore_empty=True, extra="ignore", frozen=True
    )

    kafka_bootstrap_servers: str | None = None
    kafka_ca_file: str | None = None  # TLS verified against this CA; unset: plaintext
    # Idempotent producers need InitProducerId, which the embedded tansu broker lacks:
    # deployments on real Kafka keep True, the local embedded broker sets KAFKA_IDEMPOTENT=false.
    kafka_idempotent: bool = True


def tls_context(ca_file: str | None) -> ssl.SSLContext | None:
    """TLS to Kafka, the broker's certificate verified against `ca_file` and its host name
    (KAFKA_CA_FILE); None: plaintext."""
    if ca_file is None:
        return None
    context: ssl.SSLContext = create_ssl_context(cafile=ca_file)
    return context


def tls_options(tls: ssl.SSLContext | None) -> dict[str, Any]:
    """aiokafka's client options for `tls` (none for plaintext)."""
    return {} if tls is None else {"security_protocol": "SSL", "ssl_context": tls}


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class KafkaProducer(BatchSender):
    """`Producer` over aiokafka, started lazily so a broker that is down at boot fails no one.

    `refresh_metadata` (default: when not idempotent, i.e. the embedded broker) re-reads the
    cluster metadata before each batch. A restarted embedded broker has forgotten its topics yet
    acknowledges writes to partitions it no longer has, and those writes vanish; fresh metadata
    makes the producer notice (and the broker recreate the topic) first.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        idempotent: bool,
        request_timeout_ms: int = 10_000,
        linger_ms: int = 0,
        client_id: str | None = None,
        refresh_metadata: bool | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.tls = tls
        self.idempotent = idempotent
        self.request_timeout_ms = request_timeout_ms
        self.linger_ms = linger_ms
        self.client_id = client_id
        self.refresh_metadata = (not idempotent) if refresh_metadata is None else refresh_metadata
        self._producer: Any = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: KafkaSettings, **options: Any) -> KafkaProducer:
        if not settings.kafka_bootstrap_servers:
            raise ValueError("KAFKA_BOOTSTRAP_SERVERS is not set")
        return cls(
            settings.kafka_bootstrap_servers,
            idempotent=settings.kafka_idempotent,
            tls=tls_context(settings.kafka_ca_file),
            **options,
        )

    async def start(self) -> None:
        await self._started()

    async def _started(self) -> Any:
        async with self._lock:
            if self._producer is not None:
                return self._producer
            options: dict[str, Any] = {
                "bootstrap_servers": self.bootstrap_servers,
                "acks": "all",
                "enable_idempotence": self.idempotent,
                "request_timeout_ms": self.request_timeout_ms,
                "linger_ms": self.linger_ms,
            }
            if self.client_id:
                options["client_id"] = self.client_id
            options.update(tls_options(self.tls))
            producer = AIOKafkaProducer(**options)
            try:
                await producer.start()
            except Exception as error:
                # A half-started client holds sockets and tasks; a failed start must not leak.
                await _stop_quietly(producer)
                raise BrokerUnavailable(
                    f"cannot reach Kafka at {self.bootstrap_servers}: {_describe(error)}"
                    + self._hint(error)
                ) from error
            self._producer = producer
            return producer

    async def stop(self) -> None:
        async with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            await _stop_quietly(producer)

    async def send_batch(
        self, messages: Sequence[OutgoingMessage]
    ) -> list[BrokerUnavailable | None]:
        if not messages:
            return []
        try:
            producer = await self._started()
            if self.refresh_metadata:
                topics = {message.topic for message in messages}
                if not await _refresh_producer_metadata(producer, topics):
                    raise BrokerUnavailable(
                        f"Kafka at {self.bootstrap_servers} did not answer metadata"
                    )
        except BrokerUnavailable as error:
            return [error] * len(messages)

        outcomes: list[BrokerUnavailable | None] = [None] * len(messages)
        pending: list[tuple[int, asyncio.Future[Any]]] = []
        for index, message in enumerate(messages):
            try:
                # Awaiting each enqueue in turn keeps the batch's order within each partition.
                future = await producer.send(
                    message.topic, message.value, key=message.key, headers=list(message.headers)
                )
            except Exception as error:
                # Enqueueing later messages after a failure could overtake the failed one.
                failure = self._unavailable(error)
                for rest in range(index, len(messages)):
                    outcomes[rest] = failure
                break
            pending.append((index, future))
        results = await asyncio.gather(*(future for _, future in pending), return_exceptions=True)
        for (index, _), result in zip(pending, results, strict=True):
            if isinstance(result, BaseException):
                outcomes[index] = self._unavailable(result)
        return outcomes

    def _unavailable(self, error: BaseException) -> BrokerUnavailable:
        unavailable = BrokerUnavailable(
            f"Kafka at {self.bootstrap_servers} did not ack: {_describe(error)}" + self._hint(error)
        )
        unavailable.__cause__ = error
        return unavailable

    def _hint(self, error: BaseException) -> str:
        # tansu answers InitProducerId with an unknown error; say what to do about it.
        if self.idempotent and isinstance(error, UnknownError):
            return (
                " (if this is the embedded tansu broker, set KAFKA_IDEMPOTENT=false: it does"
                " not implement InitProducerId, which idempotent producers need)"
            )
        return ""

    async def ping(self) -> bool:
        try:
            producer = await self._started()
            timeout = self.request_timeout_ms / 1000
            return await asyncio.wait_for(_refresh_producer_metadata(producer), timeout)
        except Exception:
            return False


def message_of(record: Any) -> Message:
    """An aiokafka ConsumerRecord as the transport's Message."""
    return Message(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        headers=tuple(record.headers or ()),
        timestamp_ms=record.timestamp,
    )


class KafkaSource:
    """`Source` over an aiokafka consumer group, offsets committed only when told to.

    The embedded tansu broker numbers a group's first generation 0, which aiokafka reads as
    "never joined" and so skips LeaveGroup on stop: the group's next member then waits out the
    old member's session timeout before it gets partitions. Tests use short session timeouts.

    `check_cluster_id` (for the embedded broker, which gets a new cluster id on every start):
    after each non-empty fetch the cluster id is read again, and if it changed the batch is
    dropped and the consumer starts over from the new broker's committed offsets. Without it,
    positions held from the old broker would skip the restarted broker's first messages, and
    tansu would even accept the resulting commits from the stale member.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        group_id: str,
        topics: Iterable[str],
        *,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
        fetch_max_wait_ms: int = 100,
        metadata_max_age_ms: int = 30_000,
        check_cluster_id: bool = False,
        client_id: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self._group_id = group_id
        self._topics = tuple(sorted(set(topics)))
        if not self._topics:
            raise ValueError("a KafkaSource needs at least one topic")
        self._options: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers,
            "group_id": group_id,
            "enable_auto_commit": False,
            # A new group starts at the beginning: a service deployed after events were
            # published still sees them (within retention).
            "auto_offset_reset": "earliest",
            "session_timeout_ms": session_timeout_ms,
            "heartbeat_interval_ms": heartbeat_interval_ms,
            # tansu holds a fetch spanning several partitions for the whole wait even when
            # data arrives (measured: p50 latency ~wait/2), so the wait bounds latency there;
            # Kafka answers as soon as data arrives, and a short wait only adds idle polls.
            "fetch_max_wait_ms": fetch_max_wait_ms,
            # Partitions added to a topic (or a topic recreated by a restarted embedded broker
            # with another count) are only noticed on a metadata refresh: aiokafka's default
            # of 5 minutes would leave the new partitions unread that long.
            "metadata_max_age_ms": metadata_max_age_ms,
        }
        if client_id:
            self._options["client_id"] = client_id
        self._tls = tls
        self._options.update(tls_options(tls))
        self.check_cluster_id = check_cluster_id
        self.restarts = 0
        self._consumer: Any = None
        self._admin: AIOKafkaAdminClient | None = None
        self._cluster_id: str | None = None
        self._lag: dict[TopicPartitionKey, int] = {}

    @property
    def group_id(self) -> str:
        return self._group_id

    @property
    def topics(self) -> tuple[str, ...]:
        return self._topics

    @property
    def lag(self) -> Mapping[TopicPartitionKey, int]:
        return dict(self._lag)

    async def start(self) -> None:
        if self._consumer is not None:
            return
        consumer = AIOKafkaConsumer(**self._options)
        consumer.subscribe(self._topics, listener=_AssignmentLog(self._group_id))
        try:
            await consumer.start()
            if self.check_cluster_id:
                self._admin = AIOKafkaAdminClient(
                    bootstrap_servers=self.bootstrap_servers, **tls_options(self._tls)
                )
                await self._admin.start()
                self._cluster_id = await self._read_cluster_id()
        except Exception as error:
            await _stop_quietly(consumer)
            await self._close_admin()
            raise BrokerUnavailable(
                f"cannot reach Kafka at {self.bootstrap_servers}: {_describe(error)}"
            ) from error
        self._consumer = consumer

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        self._lag = {}
        if consumer is not None:
            await _stop_quietly(consumer)
        await self._close_admin()

    async def _close_admin(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            try:
                await admin.close()
            except Exception as error:
                logger.warning("kafka client did not close cleanly", extra={"error": repr(error)})

    async def _read_cluster_id(self) -> str | None:
        if self._admin is None:
            raise RuntimeError("KafkaSource reads the cluster id only while started")
        # DescribeCluster is answered from a metadata request (all topics, none created).
        cluster = await self._admin.describe_cluster()
        cluster_id = cluster.get("cluster_id")
        return cluster_id if isinstance(cluster_id, str) else None

    async def fetch(self, timeout: float, max_records: int) -> list[Message]:
        if self._consumer is None:
            raise RuntimeError("KafkaSource.fetch before start()")
        batches = await self._consumer.getmany(
            timeout_ms=int(timeout * 1000), max_records=max_records
        )
        if batches and self.check_cluster_id and not await self._same_broker(batches):
            return []
        self._measure_lag(batches)
        return [message_of(record) for records in batches.values() for record in records]

    def _measure_lag(self, batches: Mapping[Any, Sequence[Any]]) -> None:
        """Lag of each partition a record came from: its high watermark as the fetch
        response gave it (`highwater`, no request) minus the offset after the last record.
        Partitions a rebalance took away are dropped; the others keep their last value."""
        consumer = self._consumer
        assigned = consumer.assignment()
        lag = {key: behind for key, behind in self._lag.items() if TopicPartition(*key) in assigned}
        for partition, records in batches.items():
            if not records or partition not in assigned:
                continue
            highwater = consumer.highwater(partition)
            if highwater is not None:
                behind = max(0, highwater - (records[-1].offset + 1))
                lag[(partition.topic, partition.partition)] = behind
        self._lag = lag

    async def _same_broker(self, batches: Mapping[Any, Sequence[Any]]) -> bool:
        """False (and the consumer restarted or rewound) when the batch cannot be trusted."""
        try:
            current = await self._read_cluster_id()
        except Exception as error:
            # Cannot tell now: hand back nothing and read these records again next time.
            logger.warning("cannot read the cluster id", extra={"error": _describe(error)})
            for partition, records in batches.items():
                if records:
                    self._consumer.seek(partition, records[0].offset)
            return False
        if current == self._cluster_id:
            return True
        logger.warning(
            "kafka cluster id changed: a new (restarted, empty) broker; rejoining the group",
            extra={"group_id": self._group_id, "was": self._cluster_id, "now": current},
        )
        self.restarts += 1
        await self.stop()
        await self.start()
        return False

    async def commit(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        if self._consumer is None or not offsets:
            return
        try:
            await self._consumer.commit(
                {TopicPartition(topic, part): offset for (topic, part), offset in offsets.items()}
            )
        except (CommitFailedError, IllegalStateError, KafkaError) as error:
            raise CommitFailed(f"offsets not committed: {_describe(error)}") from error


class _AssignmentLog(ConsumerRebalanceListener):  # type: ignore[misc]
    """Logs each assignment the group gives this member: with several instances of a service
    (`up --scale`, replicas), their logs show how the group split the partitions."""

    def __init__(self, group_id: str) -> None:
        self.group_id = group_id

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        pass

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        partitions: dict[str, list[int]] = {}
        for partition in assigned:
            partitions.setdefault(partition.topic, []).append(partition.partition)
        logger.info(
            "partitions assigned",
            extra={
                "group_id": self.group_id,
                "partitions": {topic: sorted(parts) for topic, parts in sorted(partitions.items())},
            },
        )


async def _stop_quietly(client: Any) -> None:
    try:
        await client.stop()
    except Exception as error:
        logger.warning("kafka client did not stop cleanly", extra={"error": _describe(error)})


async def _refresh_producer_metadata(
    producer: AIOKafkaProducer, topics: Iterable[str] = ()
) -> bool:
    """Re-read the cluster metadata of `producer` now, for `topics` too; False if unanswered.

    aiokafka has no public producer method for this: `partitions_for` answers from the cached
    metadata and `metadata_max_age_ms` only refreshes on a timer, while a restarted embedded
    broker must be asked before each batch (see `KafkaProducer`). So this reaches the
    producer's `client` attribute (`AIOKafkaClient`, exported by aiokafka, no private names);
    it is the only place that does.
    """
    client = producer.client
    for topic in topics:
        await client.add_topic(topic)
    return bool(await client.force_metadata_update())
