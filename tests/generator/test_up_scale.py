"""`cloudretail up --scale order=2,inventory=2`: the plan runs several processes of a service
on their own ports, one database (migrated once) for them, the gateway balancing over them;
bad input is refused naming the bad part; `--watch` restarts every instance."""

from __future__ import annotations

from pathlib import Path

import pytest
from cloudretail.cli import app
from cloudretail.generator import load_platform
from cloudretail.generator.stack import StackOptions, StackPlanError, parse_scale, plan_stack
from cloudretail.generator.stack import plan as stack_plan
from cloudretail.runtime.stack import Supervisor
from cloudretail.runtime.watch import Project, Watch
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "spec" / "cloudretail.yaml"
PLATFORM = load_platform(SPEC)
POSTGRES = "postgresql://127.0.0.1/{database}"


def scaled(tmp_path: Path, scale: str, only: tuple[str, ...] = ()) -> StackOptions:
    return StackOptions(
        tmp_path, database_url_template=POSTGRES, only=only, scale=parse_scale(scale)
    )


def test_each_instance_gets_a_port_and_the_gateway_all_of_them(tmp_path: Path):
    plan = stack_plan(PLATFORM, scaled(tmp_path, "order=3,inventory=2"), ROOT / "generated")
    by_name = {p.name: p for p in plan.processes}
    orders = [p for p in plan.processes if p.of == "order"]
    assert [(p.name, p.port) for p in orders] == [
        ("order", 3003),
        ("order-2", 3103),
        ("order-3", 3203),
    ]
    assert [p.env["PORT"] for p in orders] == ["3003", "3103", "3203"]
    # One database, one consumer group and outbox: the same settings but the port.
    assert {p.env["DATABASE_URL"] for p in orders} == {
        POSTGRES.format(database="cloudretail_orders")
    }
    assert orders[1].command == orders[0].command
    assert [d.name for d in plan.databases].count("order") == 1  # migrated once
    gateway = by_name["gateway"].env
    assert gateway["ORDER_URLS"] == (
        "http://127.0.0.1:3003,http://127.0.0.1:3103,http://127.0.0.1:3203"
    )
    assert gateway["INVENTORY_URLS"] == "http://127.0.0.1:3004,http://127.0.0.1:3104"
    assert gateway["PAYMENT_URLS"] == "http://127.0.0.1:3005"
    # Calls between services go to the callee's first instance.
    assert by_name["order"].env["INVENTORY_URL"] == "http://127.0.0.1:3004"
    assert len({p.port for p in plan.processes}) == len(plan.processes)


def test_an_instance_port_skips_a_port_the_plan_uses(tmp_path: Path):
    from cloudretail.generator.stack import _instance_ports

    # A service on 3900 next to an event bus on 4000: its second instance goes to 4100.
    assert _instance_ports(3900, 3, {3900, 4000}) == [3900, 4100, 4200]


def test_scale_one_is_the_plain_stack(tmp_path: Path):
    plain = stack_plan(PLATFORM, StackOptions(tmp_path), ROOT / "generated")
    once = stack_plan(PLATFORM, StackOptions(tmp_path, scale=(("order", 1),)), ROOT / "generated")
    assert [p.model_dump() for p in once.processes] == [p.model_dump() for p in plain.processes]


def test_only_keeps_every_instance_of_a_service(tmp_path: Path):
    options = scaled(tmp_path, "order=2", only=("order",))
    plan = plan_stack(SPEC, options, ROOT / "generated")
    assert [p.name for p in plan.processes] == ["order", "order-2", "gateway"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("order", "--scale: 'order' is not SERVICE=COUNT (e.g. --scale order=2,inventory=2)"),
        ("order=2,=3", "--scale: '=3' is not SERVICE=COUNT"),
        ("order=two", "--scale: 'order=two': the count must be a whole number"),
        ("order=0", "--scale: 'order=0': the count must be at least 1"),
        ("order=-1", "--scale: 'order=-1': the count must be at least 1"),
        ("order=2,order=3", "--scale names 'order' twice"),
        ("ordr=2", "--scale: unknown service 'ordr' (did you mean 'order'?)"),
        ("gateway=2", "(the gateway and the event bus run once)"),
    ],
)
def test_bad_scale_is_refused_naming_the_bad_part(tmp_path: Path, value: str, message: str):
    result = CliRunner().invoke(
        app,
        ["up", "--scale", value, "--database-url-template", POSTGRES, "--data-dir", str(tmp_path)],
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "state.json").exists()


def test_several_instances_need_postgres(tmp_path: Path):
    """SQLite is one writer process per file: two relays on one file would both read the
    same unsent rows and send them twice, and the saga's recovery claims rows with
    PostgreSQL's FOR UPDATE SKIP LOCKED, which SQLite ignores."""
    with pytest.raises(StackPlanError, match="needs PostgreSQL: add --database-url-template"):
        plan_stack(SPEC, StackOptions(tmp_path, scale=(("order", 2),)), ROOT / "generated")
    with pytest.raises(StackPlanError, match="which --only leaves out"):
        plan_stack(SPEC, scaled(tmp_path, "order=2", only=("payment",)), ROOT / "generated")


def test_watch_restarts_every_instance_of_a_changed_handler(tmp_path: Path):
    plan = stack_plan(PLATFORM, scaled(tmp_path, "order=2"), ROOT / "generated")
    supervisor = Supervisor(plan, console=False, extra_env={})
    project = Project(SPEC, ROOT / "handlers", ROOT / "generated", lambda: plan)
    watch = Watch(supervisor, project)
    handlers = (ROOT / "handlers").resolve()
    assert watch._owners({handlers / "order.py"}, plan) == {"order", "order-2"}
    everyone = watch._owners({handlers / "shared_helpers.py"}, plan)
    assert {"order", "order-2", "inventory", "payment"} <= everyone
    assert "gateway" not in everyone


def test_the_embedded_broker_gets_few_partitions_and_enough_for_the_scale(tmp_path: Path):
    from cloudretail.generator.stack import EMBEDDED_MAX_PARTITIONS, local_topics

    platform = load_platform(ROOT / "spec" / "cloudretail.yaml")
    spec = {topic.name: topic.partitions for topic in platform.topics}
    assert max(spec.values()) > EMBEDDED_MAX_PARTITIONS  # the cap below is exercised

    plain = {t.name: t.partitions for t in local_topics(platform, StackOptions(tmp_path))}
    assert plain == {name: min(n, EMBEDDED_MAX_PARTITIONS) for name, n in spec.items()}

    scaled = local_topics(platform, StackOptions(tmp_path, scale=(("order", 5),)))
    assert {t.name: t.partitions for t in scaled} == {name: min(n, 5) for name, n in spec.items()}

    # Another broker (e.g. a cluster) gets what the spec says.
    external = local_topics(platform, StackOptions(tmp_path, kafka_bootstrap="127.0.0.1:1"))
    assert {t.name: t.partitions for t in external} == spec
