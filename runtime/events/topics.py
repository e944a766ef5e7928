"""Topic management: make the broker's topics match the spec, never destructively.

`plan_topics` is pure: it compares wanted topics with what the broker described and says
what to create, what to grow, which configs to change and what cannot be reconciled (a lower
partition count in the spec: Kafka cannot shrink a topic, and deleting it would lose data).
`apply_topics` describes, plans, applies what the broker supports and reports the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import IncompatibleBrokerVersion, KafkaError, for_code
from cloudretail.runtime.events.transport import BrokerUnavailable

logger = logging.getLogger(__name__)

DLQ_SUFFIX = ".dlq"
_TOPIC_ALREADY_EXISTS = 36
_TOPIC_OVERRIDE = 1  # DescribeConfigs config_source DYNAMIC_TOPIC_CONFIG


def dlq_topic(topic: str) -> str:
    """Where a topic's undeliverable messages go."""
    return f"{topic}{DLQ_SUFFIX}"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication: int = 1
    config: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ValueError(f"topic {self.name!r}: partitions must be at least 1")
        if self.replication < 1:
            raise ValueError(f"topic {self.name!r}: replication must be at least 1")

    def dlq(self) -> TopicSpec:
        """The dead-letter topic: same shape, so keyed messages keep their partition order."""
        return TopicSpec(dlq_topic(self.name), self.partitions, self.replication, self.config)


@dataclass(frozen=True)
class TopicState:
    """A topic as the broker describes it."""

    name: str
    partitions: int
    replication: int
    # Effective values, defaults included: what the spec is compared with.
    config: Mapping[str, str] = field(default_factory=dict)
    # Only those set on the topic itself, which AlterConfigs must resend to keep.
    overrides: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PartitionIncrease:
    topic: str
    current: int
    wanted: int


@dataclass(frozen=True)
class ConfigChange:
    topic: str
    # Only the keys the spec names; other broker settings are left as they are.
    changes: Mapping[str, str]
    current: Mapping[str, str | None]
    # The topic's other overrides: AlterConfigs replaces the whole set, so they are resent.
    keep: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicPlan:
    create: tuple[TopicSpec, ...] = ()
    add_partitions: tuple[PartitionIncrease, ...] = ()
    alter_configs: tuple[ConfigChange, ...] = ()
    drift: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()

    @property
    def is_empty(self) -> bool:
        """Nothing to apply (drift is reported, never applied)."""
        return not (self.create or self.add_partitions or self.alter_configs)


def plan_topics(wanted: Iterable[TopicSpec], described: Mapping[str, TopicState]) -> TopicPlan:
    """Compare the spec with the broker. Topics the broker has but the spec lacks are ignored."""
    create: list[TopicSpec] = []
    grow: list[PartitionIncrease] = []
    alter: list[ConfigChange] = []
    drift: list[str] = []
    unchanged: list[str] = []
    for spec in wanted:
        state = described.get(spec.name)
        if state is None:
            create.append(spec)
            continue
        touched = False
        if spec.partitions > state.partitions:
            grow.append(PartitionIncrease(spec.name, state.partitions, spec.partitions))
            touched = True
        elif spec.partitions < state.partitions:
            drift.append(
                f"{spec.name}: has {state.partitions} partitions, spec says {spec.partitions}; "
                "partitions cannot be removed, left as is"
            )
        if spec.replication != state.replication:
            drift.append(
                f"{spec.name}: replication is {state.replication}, spec says "
                f"{spec.replication}; changing it needs a partition reassignment, left as is"
            )
        changes = {
            key: value for key, value in spec.config.items() if state.config.get(key) != value
        }
        if changes:
            current = {key: state.config.get(key) for key in changes}
            keep = {key: value for key, value in state.overrides.items() if key not in changes}
            alter.append(ConfigChange(spec.name, changes, current, keep))
            touched = True
        if not touched:
            unchanged.append(spec.name)
    return TopicPlan(tuple(create), tuple(grow), tuple(alter), tuple(drift), tuple(unchanged))


@dataclass
class TopicReport:
    created: list[str] = field(default_factory=list)
    partitions_raised: list[str] = field(default_factory=list)
    configs_altered: list[str] = field(default_factory=list)
    # Planned but not applied, each with the reason (unsupported by the broker, refused).
    not_applied: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.partitions_raised or self.configs_altered)

    def lines(self) -> list[str]:
        """Human-readable summary, one fact per line."""
        out = [f"created {name}" for name in self.created]
        out += [f"raised partitions of {item}" for item in self.partitions_raised]
        out += [f"altered config of {item}" for item in self.configs_altered]
        out += [f"not applied: {item}" for item in self.not_applied]
        out += [f"drift: {item}" for item in self.drift]
        out += self.notes
        return out or ["topics up to date"]


def with_dlq(wanted: Iterable[TopicSpec]) -> list[TopicSpec]:
    specs = list(wanted)
    names = {spec.name for spec in specs}
    extra = [
        spec.dlq()
        for spec in specs
        if not spec.name.endswith(DLQ_SUFFIX) and dlq_topic(spec.name) not in names
    ]
    return specs + extra


async def apply_topics(
    bootstrap: str,
    wanted: Sequence[TopicSpec],
    *,
    replication_cap: int | None = None,
    dlq: bool = True,
    request_timeout_ms: int = 10_000,
) -> TopicReport:
    """Make the broker's topics match `wanted` (plus `<topic>.dlq` topics when `dlq`).

    Replication is capped at `replication_cap`, by default the number of brokers, so one spec
    works on a single embedded broker and on a cluster. A second run changes nothing.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=request_timeout_ms)
    try:
        await admin.start()
    except Exception as error:
        await _close_quietly(admin)
        raise BrokerUnavailable(f"cannot reach Kafka at {bootstrap}: {error!r}") from error
    try:
        report = TopicReport()
        cap = replication_cap
        if cap is None:
            cluster = await admin.describe_cluster()
            cap = max(1, len(cluster.get("brokers") or []))
        specs = []
        for spec in with_dlq(wanted) if dlq else list(wanted):
            if spec.replication > cap:
                report.notes.append(
                    f"{spec.name}: replication {spec.replication} capped to {cap} "
                    f"({cap} broker{'s' if cap != 1 else ''})"
                )
                spec = TopicSpec(spec.name, spec.partitions, cap, spec.config)
            specs.append(spec)
        described = await describe_topics(admin, [spec.name for spec in specs])
        plan = plan_topics(specs, described)
        report.drift.extend(plan.drift)
        await _create(admin, plan.create, report)
        await _grow(admin, plan.add_partitions, report)
        await _alter(admin, plan.alter_configs, report)
        for line in report.lines():
            logger.info("topics: %s", line)
        return report
    finally:
        await _close_quietly(admin)


async def describe_topics(admin: Any, names: Sequence[str]) -> dict[str, TopicState]:
    """Partitions, replication and (non-default) configs of those of `names` that exist."""
    # Metadata for *all* topics: naming a missing topic in a metadata request makes brokers
    # with auto-creation (tansu, default Kafka) create it with default settings.
    topics = await admin.describe_topics(None)
    found: dict[str, TopicState] = {}
    for topic in topics:
        name = topic["topic"]
        if name not in names or topic.get("error_code"):
            continue
        partitions = topic.get("partitions") or []
        replication = len(partitions[0]["replicas"]) if partitions else 0
        found[name] = TopicState(name, len(partitions), replication)
    if found:
        configs = await _describe_configs(admin, list(found))
        for name, (config, overrides) in configs.items():
            state = found[name]
            found[name] = TopicState(name, state.partitions, state.replication, config, overrides)
    return found


async def _describe_configs(
    admin: Any, names: list[str]
) -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
    try:
        responses = await admin.describe_configs(resources)
    except (IncompatibleBrokerVersion, KafkaError) as error:
        logger.warning("cannot describe topic configs", extra={"error": repr(error)})
        return {}
    configs: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
    for response in responses:
        for resource in response.resources:
            error_code, _message, _type, name, entries = resource[:5]
            if error_code:
                continue
            values = {entry[0]: entry[1] for entry in entries if entry[1] is not None}
            # v1+ entries: (name, value, read_only, config_source, ...); source 1 is a
            # dynamic topic config, i.e. an override set on this topic.
            overrides = {
                entry[0]: entry[1]
                for entry in entries
                if entry[1] is not None and len(entry) > 3 and entry[3] == _TOPIC_OVERRIDE
            }
            configs[name] = (values, overrides)
    return configs


async def _create(admin: Any, specs: Sequence[TopicSpec], report: TopicReport) -> None:
    if not specs:
        return
    response = await admin.create_topics(
        [
            NewTopic(spec.name, spec.partitions, spec.replication, topic_configs=dict(spec.config))
            for spec in specs
        ]
    )
    for name, code, message in _topic_errors(response):
        if code == 0:
            report.created.append(name)
        elif code == _TOPIC_ALREADY_EXISTS:
            # Someone created it between describe and create: it exists, which is the goal.
            report.notes.append(f"{name}: created concurrently by someone else")
        else:
            report.not_applied.append(
                f"create {name}: {for_code(code).__name__}: {message or 'refused'}"
            )


async def _grow(admin: Any, increases: Sequence[PartitionIncrease], report: TopicReport) -> None:
    for item in increases:
        try:
            await admin.create_partitions({item.topic: NewPartitions(item.wanted)})
        except IncompatibleBrokerVersion:
            report.not_applied.append(
                f"broker does not support CreatePartitions: partitions of {item.topic} stay "
                f"{item.current} (spec {item.wanted})"
            )
        except KafkaError as error:
            report.not_applied.append(
                f"partitions of {item.topic} stay {item.current} (spec {item.wanted}): {error!r}"
            )
        else:
            report.partitions_raised.append(f"{item.topic} {item.current} -> {item.wanted}")


async def _alter(admin: Any, changes: Sequence[ConfigChange], report: TopicReport) -> None:
    for change in changes:
        described = ", ".join(
            f"{key}={change.current.get(key)!s} -> {value}" for key, value in change.changes.items()
        )
        try:
            # AlterConfigs replaces a topic's whole override set, so send the wanted keys
            # together with the overrides already there that the spec does not mention.
            configs = {**change.keep, **change.changes}
            responses = await admin.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, change.topic, configs=configs)]
            )
        except IncompatibleBrokerVersion:
            report.not_applied.append(
                f"broker does not support AlterConfigs: config of {change.topic} stays "
                f"({described})"
            )
            continue
        except KafkaError as error:
            report.not_applied.append(f"config of {change.topic} ({described}): {error!r}")
            continue
        failures = [
            f"{for_code(resource[0]).__name__}: {resource[1]}"
            for response in responses
            for resource in response.resources
            if resource[0]
        ]
        if failures:
            report.not_applied.append(
                f"config of {change.topic} ({described}): {'; '.join(failures)}"
            )
        else:
            report.configs_altered.append(f"{change.topic} ({described})")


def _topic_errors(response: Any) -> list[tuple[str, int, str | None]]:
    errors: list[tuple[str, int, str | None]] = []
    for item in response.topic_errors:
        name, code = item[0], item[1]
        message = item[2] if len(item) > 2 else None
        errors.append((name, code, message))
    return errors


async def _close_quietly(admin: Any) -> None:
    try:
        await admin.close()
    except Exception as error:
        logger.warning("kafka admin client did not close cleanly", extra={"error": repr(error)})
