"""The capacity arithmetic at the HPA maximum (generator/capacity.py) on small specs, and how
`validate` / `generate` report it: located warnings, errors with --strict."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cloudretail.cli import app
from cloudretail.generator import SpecError, load_platform, validate_spec
from cloudretail.generator.capacity import (
    CONNECTIONS,
    DISRUPTION,
    PARTITIONS,
    RESOURCES,
    CapacityModel,
    capacity_model,
    quantity,
)
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = ROOT / "tests" / "specs" / "minimal.yaml"
runner = CliRunner()
Change = Callable[[dict[str, Any]], None]


def _spec(tmp_path: Path, change: Change | None = None) -> Path:
    data = yaml.safe_load(MINIMAL.read_text())
    if change is not None:
        change(data)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _model(tmp_path: Path, change: Change | None = None) -> CapacityModel:
    return capacity_model(load_platform(_spec(tmp_path, change)))


def _checks(model: CapacityModel) -> list[tuple[str, str]]:
    return [(finding.check, ".".join(map(str, finding.path))) for finding in model.findings]


def test_quantities() -> None:
    assert quantity("100m") == pytest.approx(0.1)
    assert quantity("2") == 2
    assert quantity("128Mi") == 128 * 1024**2
    assert quantity("1.5Gi") == 1.5 * 1024**3


def test_minimal_at_its_hpa_maximum(tmp_path: Path) -> None:
    model = _model(tmp_path)
    cart, catalog, bus = (
        model.deployable(name) for name in ("cart-service", "catalog-service", "event-bus")
    )
    assert (cart.max_replicas, cart.connections_per_replica, cart.max_connections) == (6, 15, 90)
    assert (catalog.max_replicas, catalog.max_connections) == (4, 60)
    assert model.deployable("api-gateway").max_connections == 0  # no database
    assert [(use.topic, use.active, use.idle) for use in catalog.consumes] == [
        ("shop-events", 2, 2)
    ]
    assert cart.consumes == ()  # it publishes only
    assert [(use.topic, use.idle) for use in bus.consumes] == [("shop-events", 2)]
    shop_cart = model.database("shop_cart")
    # max_connections 100, less 3 for superusers and 1 for the migration Job
    assert (shop_cart.client_connections, shop_cart.usable) == (90, 96)
    assert model.topic("shop-events").groups == (("catalog-service", 4), ("event-bus", 4))
    assert _checks(model) == [(PARTITIONS, "topics.shop-events.partitions")]
    assert "Raise `partitions` to 4" in model.findings[0].message


def test_partitions_covering_every_group_fit(tmp_path: Path) -> None:
    def raise_partitions(data: dict[str, Any]) -> None:
        data["topics"]["shop-events"]["partitions"] = 4

    assert _model(tmp_path, raise_partitions).findings == ()


def _cart_max(count: int) -> Change:
    def change(data: dict[str, Any]) -> None:
        data["topics"]["shop-events"]["partitions"] = 4
        data["services"]["cart"]["scaling"] = {"max": count}

    return change


def test_connections_beyond_max_connections(tmp_path: Path) -> None:
    assert _model(tmp_path, _cart_max(6)).findings == ()  # 6 x 15 = 90 <= 96
    model = _model(tmp_path, _cart_max(7))  # 105 > 96
    assert _checks(model) == [(CONNECTIONS, "services.cart.database")]
    assert "open 105 connections" in model.findings[0].message
    assert "PostgreSQL accepts 96" in model.findings[0].message


def test_a_pooler_serves_them_and_is_checked_on_both_sides(tmp_path: Path) -> None:
    def pooled(pool_size: int, clients: int = 1000) -> Change:
        def change(data: dict[str, Any]) -> None:
            _cart_max(7)(data)
            data["defaults"]["database"] = {
                "pooler": {
                    "instances": 2,
                    "pool_size": pool_size,
                    "max_client_connections": clients,
                }
            }

        return change

    model = _model(tmp_path, pooled(20))
    cart_db = model.database("shop_cart")
    assert (cart_db.client_connections, cart_db.server_connections) == (105, 42)
    assert model.findings == ()
    # Two PgBouncer pods x (60 + 1 for auth) = 122 server connections > 96, for each database.
    assert _checks(_model(tmp_path, pooled(60))) == [
        (CONNECTIONS, "services.cart.database"),
        (CONNECTIONS, "services.catalog.database"),
        (CONNECTIONS, "event_bus.database"),
    ]
    # 105 clients, but two pods accepting 50 each.
    assert _checks(_model(tmp_path, pooled(20, clients=50))) == [
        (CONNECTIONS, "services.cart.database")
    ]


def test_a_database_entry_is_where_its_findings_point(tmp_path: Path) -> None:
    def own(data: dict[str, Any]) -> None:
        _cart_max(7)(data)
        data["databases"] = {"shop_cart": {"pooler": {"instances": 1, "pool_size": 200}}}

    assert _checks(_model(tmp_path, own)) == [(CONNECTIONS, "databases.shop_cart.pooler.pool_size")]

    def bigger(data: dict[str, Any]) -> None:
        _cart_max(7)(data)
        data["databases"] = {"shop_cart": {"max_connections": 120}}

    assert _model(tmp_path, bigger).findings == ()


def test_a_databases_entry_must_name_a_database(tmp_path: Path) -> None:
    def typo(data: dict[str, Any]) -> None:
        data["databases"] = {"shop_carts": {"max_connections": 200}}

    with pytest.raises(SpecError) as raised:
        load_platform(_spec(tmp_path, typo))
    (issue,) = raised.value.issues
    assert issue.where == "databases.shop_carts"
    assert "did you mean 'shop_cart'" in issue.message


def test_disruption_budget_against_the_hpa_minimum(tmp_path: Path) -> None:
    def floor(count: int) -> Change:
        def change(data: dict[str, Any]) -> None:
            data["topics"]["shop-events"]["partitions"] = 6
            data["defaults"]["scaling"]["min"] = count

        return change

    model = _model(tmp_path, floor(1))
    assert all(not item.pdb_blocks_every_eviction for item in model.deployables)
    assert {check for check, _ in _checks(model)} == {DISRUPTION}
    assert (DISRUPTION, "services.cart.scaling.min") in _checks(model)
    assert "node drain stop every instance" in model.findings[0].message
    zero = _model(tmp_path, floor(0))
    assert "minReplicas must be at least 1" in zero.findings[0].message
    assert _model(tmp_path, floor(2)).findings == ()


def test_autoscaling_targets_against_requests_and_limits(tmp_path: Path) -> None:
    def unreachable(data: dict[str, Any]) -> None:
        data["topics"]["shop-events"]["partitions"] = 6
        data["services"]["cart"]["resources"] = {
            "requests": {"cpu": "500m", "memory": "0"},
            "limits": {"cpu": "500m", "memory": "512Mi"},
        }

    model = _model(tmp_path, unreachable)
    # cpu: 70% of 500m is 350m, below the 500m limit: reachable. memory: no request at all.
    assert _checks(model) == [(RESOURCES, "services.cart.scaling.memory")]
    assert "never scales" in model.findings[0].message


def test_a_cpu_target_above_the_limit_is_unreachable(tmp_path: Path) -> None:
    def capped(data: dict[str, Any]) -> None:
        data["topics"]["shop-events"]["partitions"] = 6
        data["defaults"]["scaling"]["cpu"] = 100
        data["defaults"]["resources"]["limits"]["cpu"] = "100m"

    findings = _model(tmp_path, capped).findings
    assert findings and {finding.check for finding in findings} == {RESOURCES}
    assert all(finding.path[-1] == "cpu" for finding in findings)
    assert "never adds a replica" in findings[0].message


def _handlers(tmp_path: Path) -> Path:
    folder = tmp_path / "handlers"
    folder.mkdir()
    (folder / "cart.py").write_text("async def checkout(*args, **kwargs):\n    return None\n")
    (folder / "catalog.py").write_text(
        "async def on_cart_checked_out(*args, **kwargs):\n    return None\n"
    )
    return folder


def _partitions_line() -> tuple[int, int]:
    for number, line in enumerate(MINIMAL.read_text().splitlines(), start=1):
        if "shop-events:" in line:
            return number, line.index("partitions: ") + len("partitions: ") + 1
    raise AssertionError("minimal.yaml has no shop-events")


def test_the_warning_is_located_at_the_key_to_change(tmp_path: Path) -> None:
    validated = validate_spec(MINIMAL, tmp_path / "out")
    (warning,) = validated.warnings
    assert (warning.location.line, warning.location.column) == _partitions_line()
    assert warning.where == "topics.shop-events.partitions"


def test_validate_warns_and_strict_refuses(tmp_path: Path, in_root: Path) -> None:
    line, column = _partitions_line()
    base = ["validate", str(MINIMAL), "--out", str(tmp_path / "out")]
    base += ["--handlers", str(_handlers(tmp_path))]
    located = f"tests/specs/minimal.yaml:{line}:{column}: "  # relative to the working folder
    plain = runner.invoke(app, base)
    assert plain.exit_code == 0, plain.output
    assert f"{located}warning: topics.shop-events.partitions: 2 partitions" in plain.stderr
    assert "valid" in plain.stdout
    strict = runner.invoke(app, [*base, "--strict"])
    assert strict.exit_code == 2
    assert f"{located}topics.shop-events.partitions: 2 partitions" in strict.stderr
    assert "1 problem found" in strict.stderr
    record = json.loads(runner.invoke(app, [*base, "--json"]).stdout)
    assert record["ok"] is True
    assert [(w["line"], w["column"], w["path"]) for w in record["warnings"]] == [
        (line, column, "topics.shop-events.partitions")
    ]
    refused = runner.invoke(app, [*base, "--json", "--strict"])
    assert refused.exit_code == 2
    assert json.loads(refused.stdout)["errors"][0]["path"] == "topics.shop-events.partitions"


def test_generate_strict_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    handlers = _handlers(tmp_path)
    args = ["generate", "--spec", str(MINIMAL), "--out", str(out), "--handlers", str(handlers)]
    refused = runner.invoke(app, [*args, "--strict"])
    assert refused.exit_code == 2
    assert "topics.shop-events.partitions" in refused.stderr
    assert not out.exists()


def test_the_repository_spec_holds_at_its_hpa_maximum(in_root: Path) -> None:
    """spec/cloudretail.yaml: every database behind PgBouncer, partitions for 15 replicas."""
    model = capacity_model(load_platform(Path("spec/cloudretail.yaml")))
    assert model.findings == ()
    orders = model.database("cloudretail_orders")
    assert (orders.client_connections, orders.server_connections, orders.usable) == (225, 42, 96)
    assert {topic.partitions for topic in model.topics} == {15}
