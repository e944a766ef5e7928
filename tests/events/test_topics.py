"""Topic planning as pure functions, and applying it to the embedded broker."""

from __future__ import annotations

import uuid

import pytest
from cloudretail.runtime.events.broker import EmbeddedBroker
from cloudretail.runtime.events.topics import (
    ConfigChange,
    PartitionIncrease,
    TopicSpec,
    TopicState,
    apply_topics,
    plan_topics,
    with_dlq,
)

WEEK = "604800000"
MONTH = "2592000000"


def state(name: str, partitions: int, config: dict[str, str] | None = None) -> TopicState:
    return TopicState(name, partitions, 1, config or {}, config or {})


def test_missing_topics_are_created() -> None:
    spec = TopicSpec("orders", 6, 1, {"retention.ms": MONTH})
    plan = plan_topics([spec], {})
    assert plan.create == (spec,)
    assert not plan.add_partitions and not plan.alter_configs and not plan.drift
    assert not plan.is_empty


def test_partitions_are_raised_when_the_spec_says_more() -> None:
    plan = plan_topics([TopicSpec("orders", 6)], {"orders": state("orders", 3)})
    assert plan.add_partitions == (PartitionIncrease("orders", 3, 6),)
    assert not plan.create


def test_a_lower_partition_count_is_drift_not_a_change() -> None:
    plan = plan_topics([TopicSpec("orders", 3)], {"orders": state("orders", 6)})
    assert plan.is_empty
    assert plan.add_partitions == ()
    assert plan.drift == (
        "orders: has 6 partitions, spec says 3; partitions cannot be removed, left as is",
    )


def test_configs_that_differ_are_altered_keeping_other_overrides() -> None:
    described = {"orders": state("orders", 3, {"retention.ms": WEEK, "cleanup.policy": "delete"})}
    plan = plan_topics([TopicSpec("orders", 3, 1, {"retention.ms": MONTH})], described)
    assert plan.alter_configs == (
        ConfigChange(
            "orders", {"retention.ms": MONTH}, {"retention.ms": WEEK}, {"cleanup.policy": "delete"}
        ),
    )
    same = plan_topics([TopicSpec("orders", 3, 1, {"retention.ms": WEEK})], described)
    assert same.is_empty and same.unchanged == ("orders",)


def test_topics_not_in_the_spec_are_never_touched() -> None:
    described = {"legacy": state("legacy", 12), "orders": state("orders", 3)}
    plan = plan_topics([TopicSpec("orders", 3)], described)
    assert plan.is_empty and not plan.drift
    assert plan.unchanged == ("orders",)
    # There is no "delete" in a plan at all.
    assert not hasattr(plan, "delete")


def test_replication_difference_is_reported_as_drift() -> None:
    plan = plan_topics([TopicSpec("orders", 3, 3)], {"orders": TopicState("orders", 3, 1)})
    assert plan.is_empty
    assert plan.drift and "replication is 1, spec says 3" in plan.drift[0]


def test_every_topic_gets_a_dead_letter_topic_of_the_same_shape() -> None:
    specs = with_dlq([TopicSpec("orders", 6, 1, {"retention.ms": MONTH})])
    assert [spec.name for spec in specs] == ["orders", "orders.dlq"]
    assert specs[1].partitions == 6 and specs[1].config == {"retention.ms": MONTH}


def test_spec_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="partitions must be at least 1"):
        TopicSpec("x", 0)


async def test_apply_topics_twice_changes_nothing_the_second_time(
    embedded_broker: EmbeddedBroker,
) -> None:
    name = f"apply-{uuid.uuid4().hex[:8]}"
    wanted = [TopicSpec(name, 3, 3, {"retention.ms": WEEK})]
    first = await apply_topics(embedded_broker.bootstrap_servers, wanted)
    assert sorted(first.created) == [name, f"{name}.dlq"]
    assert first.changed
    # One embedded broker: replication 3 is capped to 1, and said so.
    assert f"{name}: replication 3 capped to 1 (1 broker)" in first.notes

    second = await apply_topics(embedded_broker.bootstrap_servers, wanted)
    assert not second.changed
    assert second.created == [] and second.not_applied == [] and second.drift == []
    assert second.lines() == [
        f"{name}: replication 3 capped to 1 (1 broker)",
        f"{name}.dlq: replication 3 capped to 1 (1 broker)",
    ]


async def test_apply_topics_reports_what_the_embedded_broker_cannot_do(
    embedded_broker: EmbeddedBroker,
) -> None:
    name = f"grow-{uuid.uuid4().hex[:8]}"
    bootstrap = embedded_broker.bootstrap_servers
    await apply_topics(bootstrap, [TopicSpec(name, 3, 1, {"retention.ms": WEEK})], dlq=False)

    report = await apply_topics(
        bootstrap, [TopicSpec(name, 6, 1, {"retention.ms": MONTH})], dlq=False
    )
    assert not report.changed
    assert report.not_applied == [
        f"broker does not support CreatePartitions: partitions of {name} stay 3 (spec 6)",
        f"broker does not support AlterConfigs: config of {name} stays "
        f"(retention.ms={WEEK} -> {MONTH})",
    ]

    lower = await apply_topics(
        bootstrap, [TopicSpec(name, 2, 1, {"retention.ms": WEEK})], dlq=False
    )
    assert not lower.changed and not lower.not_applied
    assert lower.drift == [
        f"{name}: has 3 partitions, spec says 2; partitions cannot be removed, left as is"
    ]
