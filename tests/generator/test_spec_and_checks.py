from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cloudretail.generator import SpecError, load_platform
from cloudretail.generator.checks import check_spec
from cloudretail.generator.loader import load_text
from cloudretail.generator.spec import Spec
from cloudretail.generator.validation import parse_spec, suggest

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = ROOT / "tests" / "specs" / "minimal.yaml"


def _minimal() -> dict:
    return yaml.safe_load(MINIMAL.read_text())


def _issues(data: dict) -> list[str]:
    document = load_text(yaml.safe_dump(data, sort_keys=False), "t.yaml")
    try:
        spec = parse_spec(document)
    except SpecError as error:
        return [f"{i.where}: {i.message}" for i in error.issues]
    return [f"{i.where}: {i.message}" for i in check_spec(spec, document)]


def test_the_real_spec_is_valid():
    platform = load_platform(ROOT / "spec" / "cloudretail.yaml")
    assert [s.name for s in platform.services] == [
        "user",
        "product",
        "order",
        "inventory",
        "payment",
        "notification",
        "analytics",
    ]


def test_minimal_spec_is_valid():
    assert _issues(_minimal()) == []


def test_unknown_key_is_refused_with_a_suggestion():
    data = _minimal()
    data["gateway"]["rate_limt"] = data["gateway"].pop("rate_limit")
    issues = _issues(data)
    assert "gateway.rate_limt: unknown key 'rate_limt' (did you mean 'rate_limit'?)" in issues


def test_every_problem_is_reported_at_once():
    data = _minimal()
    data["services"]["cart"]["port"] = 3001
    data["services"]["cart"]["calls"] = ["catalogue"]
    data["services"]["catalog"]["tables"]["items"]["indexes"] = ["nmae"]
    issues = _issues(data)
    assert len(issues) == 3, issues
    assert any("call to unknown service 'catalogue' (did you mean 'catalog'?)" in i for i in issues)
    assert any(
        "index on unknown column 'nmae' of table 'items' (did you mean 'name'?)" in i
        for i in issues
    )
    assert any("port 3001 is already used" in i for i in issues)
    # The saga now calls a service that is not in `calls`: the misspelt call is its cause,
    # reported once (tests/generator/test_cli_fit.py).
    assert not any("does not declare `calls: [catalog]`" in i for i in issues)


def test_scaling_merges_defaults_before_comparing():
    data = _minimal()
    data["services"]["cart"]["scaling"] = {"min": 5}  # default max is 4
    assert _issues(data) == ["services.cart.scaling: scaling min (5) is greater than max (4)"]


@pytest.mark.parametrize("name", ["class", "match"])
def test_python_keywords_are_refused_as_service_names(name):
    data = _minimal()
    data["services"][name] = data["services"].pop("cart")
    data["services"]["catalog"]["events"]["consumes"] = []
    data["events"].pop("cart.checked_out")
    data["services"][name]["events"]["publishes"] = []
    issues = _issues(data)
    assert f"services.{name}: '{name}' is a reserved word in Python; choose another name" in issues


def test_model_reserved_column_name():
    data = _minimal()
    columns = data["services"]["catalog"]["tables"]["items"]["columns"]
    columns["metadata"] = {"type": "json"}
    assert _issues(data) == [
        "services.catalog.tables.items.columns.metadata: "
        "'metadata' is reserved by the generated models; choose another name"
    ]


def test_route_needs_handler_or_crud_but_not_both():
    data = _minimal()
    data["services"]["catalog"]["routes"][0]["handler"] = "list_items"
    assert _issues(data) == [
        "services.catalog.routes[0]: a route names exactly one of `handler` or `crud`"
    ]


def test_route_outside_prefix_and_roles_on_admin():
    data = _minimal()
    route = data["services"]["catalog"]["routes"][2]
    route["path"] = "/api/things"
    route["roles"] = ["vendor"]
    assert _issues(data) == [
        "services.catalog.routes[2].path: path '/api/things' is outside the service prefix '/api/items'",
        "services.catalog.routes[2].roles: `roles` only applies to `auth: authenticated`",
    ]


def test_event_key_must_be_a_payload_field():
    data = _minimal()
    data["events"]["item.created"]["key"] = "itemid"
    assert _issues(data) == [
        "events.item.created.key: key 'itemid' is not a payload field (did you mean 'item_id'?)"
    ]


def test_default_must_fit_the_column():
    data = _minimal()
    columns = data["services"]["catalog"]["tables"]["items"]["columns"]
    columns["name"]["default"] = 5
    columns["price"]["default"] = "free"
    issues = _issues(data)
    assert (
        "services.catalog.tables.items.columns.name: default 5 does not fit a `string` column"
        in issues
    )
    assert (
        "services.catalog.tables.items.columns.price: default 'free' does not fit a `decimal` column"
        in issues
    )


def test_suggest():
    assert suggest("paymnet", ["payment", "order"]) == " (did you mean 'payment'?)"
    assert suggest("zzz", ["payment"]) == ""


def test_json_schema_is_exported():
    schema = Spec.model_json_schema()
    assert schema["additionalProperties"] is False
    assert "services" in schema["properties"]


def test_body_status_and_errors_belong_to_handler_routes():
    data = _minimal()
    data["services"]["catalog"]["routes"][2].update(body="NewItem", status=201)
    checkout = data["services"]["cart"]["routes"][0]
    checkout.update(method="GET", body="Checkout", errors=[409, 500])
    assert _issues(data) == [
        "services.catalog.routes[2].body: `body` is for handler routes; CRUD routes derive it",
        "services.catalog.routes[2].status: `status` is for handler routes; CRUD routes derive it",
        "services.cart.routes[0].body: a GET request carries no body",
        "services.cart.routes[0].errors: 500 is a bug, not an answer a route documents",
    ]


def test_each_route_documents_the_problems_its_shape_can_give(tmp_path):
    data = _minimal()
    data["services"]["cart"]["routes"][0].update(body="Checkout", status=201, errors=[409, 402])
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    platform = load_platform(spec)
    routes = {(r.method, r.path): r for s in platform.services for r in s.routes}
    assert routes["GET", "/api/items"].problems == (422, 503)
    assert routes["GET", "/api/items/{id}"].problems == (404, 422, 503)
    assert routes["POST", "/api/items"].problems == (400, 401, 403, 409, 413, 415, 422, 503)
    checkout = routes["POST", "/api/cart/checkout"]
    assert checkout.problems == (400, 401, 402, 409, 413, 415, 422, 503)
    assert (checkout.body, checkout.status) == ("Checkout", 201)


def test_token_routes_need_an_issuer_and_declared_roles():
    data = _minimal()
    del data["auth"]
    assert _issues(data) == [
        "services.catalog.routes[2].auth: `auth: admin` needs a token issuer: declare the "
        "top-level `auth` (issuer, jwks, roles)"
    ]
    data = _minimal()
    data["auth"] = {"issuer": "catalgo", "jwks": "/api/items/keys", "roles": ["customer"]}
    data["services"]["cart"]["routes"][0]["roles"] = ["vendor"]
    assert _issues(data) == [
        "auth.issuer: unknown service 'catalgo' (did you mean 'catalog'?)",
        "services.catalog.routes[2].auth: role 'admin' is not among the declared roles (customer)",
        "services.cart.routes[0].roles: role 'vendor' is not among the declared roles (customer)",
    ]


def test_the_issuer_serves_its_keys_on_a_public_get_route():
    data = _minimal()
    data["auth"] = {"issuer": "catalog", "jwks": "/api/items/keys", "roles": ["customer", "admin"]}
    assert _issues(data) == [
        "auth.jwks: service 'catalog' has no public GET route at '/api/items/keys' to serve its keys"
    ]
    data["services"]["catalog"]["routes"].append(
        {"method": "GET", "path": "/api/items/keys", "auth": "public", "handler": "keys"}
    )
    assert _issues(data) == []
    data["auth"] = {"jwks": "/api/items/keys", "roles": ["customer", "admin"]}
    assert _issues(data) == [
        "auth.jwks: without `issuer`, `jwks` is the full URL of the identity provider's keys"
    ]
