"""Column kinds and auth rules are registries: one entry each, and every target follows.

The fixture registers a column kind `date` (with a `today` default), a column kind `smallint`
and an auth rule `vendor` (a user token with the role vendor), without touching anything
else; a spec using them is then generated into code that passes ruff, imports, validates,
creates its tables and routes through the gateway.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from cloudretail.generator import SpecError, generate, load_platform
from cloudretail.generator.auth_rules import AUTH_RULES, AuthRule
from cloudretail.generator.kinds import KINDS, ColumnKind, DefaultFunction
from cloudretail.generator.spec import Spec
from cloudretail.runtime.gateway.config import load_config
from ruff import find_ruff_bin

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = ROOT / "tests" / "specs" / "minimal.yaml"

DATE = ColumnKind(
    "date",
    sql="DATE",
    model_type="sa.Date",
    schema_type=lambda _: sa.Date(),
    python="date",
    python_import=("datetime", "date"),
    functions={
        "today": DefaultFunction(
            python="date.today",
            imports=("datetime", "date"),
            server="CURRENT_DATE",
            docs="CURRENT_DATE",
        )
    },
    payload=True,
)
SMALLINT = ColumnKind(
    "smallint",
    sql="SMALLINT",
    model_type="sa.SmallInteger",
    schema_type=lambda _: sa.SmallInteger(),
    python="int",
    integer_range=(-(2**15), 2**15 - 1),
    checkable=True,
    literal_defaults=(int,),
)
VENDOR = AuthRule(
    "vendor",
    token="user",
    roles=("vendor",),
    gateway="authenticated",
    dependency="Depends(require({roles}))",
    dependency_import=("cloudretail.runtime.auth", "require"),
)


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(KINDS, "date", DATE)
    monkeypatch.setitem(KINDS, "smallint", SMALLINT)
    monkeypatch.setitem(AUTH_RULES, "vendor", VENDOR)


def _spec(tmp_path: Path) -> Path:
    data = yaml.safe_load(MINIMAL.read_text())
    data["auth"]["roles"] = ["customer", "vendor", "admin"]
    data["events"]["item.created"]["payload"]["released_on"] = "date | null"
    catalog = data["services"]["catalog"]
    items = catalog["tables"]["items"]
    items["columns"].update(
        released_on={"type": "date"},
        listed_on={"type": "date", "default": "today", "nullable": False},
        stock={"type": "smallint", "default": 0, "nullable": False, "check": ">= 0"},
    )
    items["filters"] = [
        {"name": "released_after", "op": "ge", "column": "released_on"},
        {"name": "stock_at_least", "op": "ge", "column": "stock"},
    ]
    items["sort"] = ["released_on", "stock"]
    catalog["routes"] += [
        {"method": "PATCH", "path": "/api/items/{id}", "auth": "vendor", "crud": "items.update"},
        {"method": "DELETE", "path": "/api/items/{id}", "auth": "vendor", "crud": "items.delete"},
    ]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _ruff(*paths: Path) -> str:
    config = ["--config", str(ROOT / "pyproject.toml"), "--no-cache"]
    said = []
    for command in (["check", *config], ["format", "--check", "--diff", *config]):
        done = subprocess.run(
            [find_ruff_bin(), *command, *map(str, paths)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            said.append(done.stdout + done.stderr)
    return "\n".join(said)


# What the generated code does with the new kinds, run in a process of its own so that its
# `generated` and `handlers` packages are the ones in the temporary folder.
_SMOKE = """
import datetime, json
import sqlalchemy as sa
from pydantic import ValidationError

import generated.events
import generated.services.cart.app
import generated.services.catalog.app
import generated.services.catalog.routes
from generated.events import ItemCreated
from generated.services.catalog.models import Base, Item
from generated.services.catalog.schemas import ItemCreate, ItemUpdate

body = ItemCreate(name="lamp", price="9.50", released_on="2024-05-01", stock=3)
assert body.released_on == datetime.date(2024, 5, 1)
assert "listed_on" not in ItemCreate.model_fields  # made by the model, not sent
for stock in (-1, 2**15):
    try:
        ItemUpdate(stock=stock)
    except ValidationError:
        pass
    else:
        raise AssertionError(stock)
event = ItemCreated(item_id="0" * 32, price="1.00", note=None, released_on="2024-05-01")
assert event.released_on == datetime.date(2024, 5, 1)

engine = sa.create_engine("sqlite://")
Base.metadata.create_all(engine)
with engine.begin() as connection:
    connection.execute(sa.insert(Item).values(name="lamp", price=1, released_on=None))
    row = connection.execute(sa.select(Item.listed_on, Item.stock)).one()
assert row.listed_on == datetime.date.today() and row.stock == 0, row
print(json.dumps({"ok": True}))
"""


def test_a_spec_with_an_unregistered_kind_or_rule_is_refused(tmp_path: Path):
    with pytest.raises(SpecError) as error:
        load_platform(_spec(tmp_path))
    text = str(error.value)
    assert "columns.listed_on.type: Input should be 'uuid', 'string'," in text
    assert "columns.stock.type: Input should be" in text
    assert "routes[3].auth: Input should be 'public', 'authenticated', 'admin' or 'service'" in (
        text
    )
    assert "payload.released_on: 'date | null' is not valid here" in text


@pytest.mark.usefixtures("registered")
def test_the_schema_lists_what_is_registered():
    schema: Any = Spec.model_json_schema()
    defs = schema["$defs"]
    assert "date" in defs["ColumnSpec"]["properties"]["type"]["enum"]
    assert "vendor" in defs["RouteSpec"]["properties"]["auth"]["enum"]
    assert "vendor" in defs["GatewayRouteSpec"]["properties"]["auth"]["enum"]


@pytest.mark.usefixtures("registered")
def test_the_checks_read_the_registered_kind(tmp_path: Path):
    path = _spec(tmp_path)
    data = yaml.safe_load(path.read_text())
    columns = data["services"]["catalog"]["tables"]["items"]["columns"]
    columns["released_on"] = {"type": "date", "default": "tomorrow", "length": 3}
    columns["stock"]["on_update"] = "now"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(SpecError) as error:
        load_platform(path)
    messages = [issue.message for issue in error.value.issues]
    assert messages == [
        "`length` does not apply to a `date` column",
        "a `date` default can only be `today`",
        "`on_update: now` applies to `timestamp` columns",
    ]


@pytest.mark.usefixtures("registered")
def test_a_new_kind_and_rule_generate_code_that_lints_imports_and_runs(tmp_path: Path):
    out, handlers = tmp_path / "generated", tmp_path / "handlers"
    generate(_spec(tmp_path), out, handlers_dir=handlers)
    catalog = out / "services" / "catalog"

    models = (catalog / "models.py").read_text()
    assert "from datetime import date, datetime\n" in models
    assert "released_on: Mapped[date | None] = mapped_column(sa.Date)" in models
    flat = " ".join(models.split())  # the layout is ruff's
    assert 'default=date.today, server_default=sa.text("CURRENT_DATE")' in flat
    assert "mapped_column(\n        sa.SmallInteger," in models
    schemas = (catalog / "schemas.py").read_text()
    assert "stock: int = Field(default=0, ge=0, le=32767)" in schemas
    routes = (catalog / "routes.py").read_text()
    assert 'dependencies=[Depends(require("vendor"))]' in routes
    assert "released_after: date | None = None" in routes
    assert "Query(ge=-32768, le=32767)" in routes
    (revision,) = (catalog / "migrations" / "versions").glob("*.py")
    assert 'sa.Column("listed_on", sa.Date(), server_default=sa.text("CURRENT_DATE")' in (
        revision.read_text()
    )
    assert (
        "listed_on DATE NOT NULL DEFAULT CURRENT_DATE"
        in (out / "docs" / "architecture.md").read_text()
    )
    assert "released_on: date | None = None" in (out / "events.py").read_text()

    # What the new kinds and rule reach: the catalog service, the event payloads, the stubs.
    assert _ruff(catalog, out / "events.py", handlers) == ""

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-c", _SMOKE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"ok": True}

    # The gateway routes the new rule as what it is to the gateway, with its role written
    # out: the runtime needs no change for it.
    config = load_config(out / "gateway" / "routes.yaml", env={})
    vendor = [r for r in config.routes_file.routes if r.method in {"PATCH", "DELETE"}]
    assert {(r.auth, r.roles) for r in vendor} == {("authenticated", ("vendor",))}
