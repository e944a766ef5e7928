"""GDPR in the spec: a table's `subject`, a column's `pii`, the platform's `gdpr`. What the
checks refuse (each with its location), and what the generator makes of it: the erasure
wired to the erasure event, the internal export route and the calls to it, no migration.
The services doing it on real databases: tests/services/test_personal_data.py."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from cloudretail.generator import generate, load_platform, render
from cloudretail.generator.checks import check_spec
from cloudretail.generator.errors import SpecError
from cloudretail.generator.handlers import needed
from cloudretail.generator.loader import load_text
from cloudretail.generator.spec import Spec
from cloudretail.generator.validation import parse_spec
from cloudretail.runtime.personal_data import Pii

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = ROOT / "tests" / "specs" / "minimal.yaml"
GENERATED = ROOT / "generated"


def gdpr_spec() -> dict[str, Any]:
    """The minimal spec with a person in it: the cart service owns the shoppers (it
    publishes `cart.forgotten`), the catalog keeps their reviews and consumes it."""
    data: dict[str, Any] = yaml.safe_load(MINIMAL.read_text())
    data["events"]["cart.forgotten"] = {"key": "shopper_id", "payload": {"shopper_id": "uuid"}}
    data["gdpr"] = {"erasure_event": "cart.forgotten", "subject_key": "shopper_id"}
    services = data["services"]
    services["cart"]["events"]["publishes"].append("cart.forgotten")
    catalog = services["catalog"]
    catalog["events"]["consumes"].append("cart.forgotten")
    catalog["tables"]["reviews"] = {
        "subject": "shopper_id",
        "columns": {
            "id": {"type": "uuid", "primary_key": True, "default": "gen_random_uuid"},
            "shopper_id": {"type": "uuid", "nullable": False, "pii": "anonymise"},
            "item_id": {"type": "uuid", "nullable": False},
            "body": {"type": "text", "pii": "erase"},
            "rating": {"type": "integer", "nullable": False, "pii": "keep"},
            "shipping": {"type": "json", "pii": "erase", "pii_keys": ["street"]},
        },
    }
    catalog["tables"]["review_votes"] = {
        "subject": "review_id",
        "subject_through": "reviews",
        "columns": {
            "id": {"type": "uuid", "primary_key": True, "default": "gen_random_uuid"},
            "review_id": {"type": "uuid", "nullable": False},
            "voter": {"type": "string", "length": 40, "pii": "anonymise", "replacement": "-"},
        },
    }
    return data


def _issues(data: dict[str, Any]) -> list[str]:
    document = load_text(yaml.safe_dump(data, sort_keys=False), "t.yaml")
    return [
        f"{issue.location}: {issue.where}: {issue.message}"
        for issue in check_spec(parse_spec(document), document)
    ]


def _reviews(data: dict[str, Any]) -> dict[str, Any]:
    table: dict[str, Any] = data["services"]["catalog"]["tables"]["reviews"]
    return table


def test_a_spec_declaring_its_personal_data_is_valid() -> None:
    assert _issues(gdpr_spec()) == []


def _column(name: str, **values: Any) -> Any:
    def change(data: dict[str, Any]) -> None:
        _reviews(data)["columns"][name] = values

    return change


def _table(**values: Any) -> Any:
    def change(data: dict[str, Any]) -> None:
        table = _reviews(data)
        for key, value in values.items():
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value

    return change


def _set(path: tuple[str, ...], value: Any) -> Any:
    def change(data: dict[str, Any]) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        if value is None:
            node.pop(path[-1])
        else:
            node[path[-1]] = value

    return change


REVIEWS = "services.catalog.tables.reviews"


@pytest.mark.parametrize(
    ("change", "where", "message"),
    [
        (
            _column("id", type="uuid", primary_key=True, pii="erase"),
            f"{REVIEWS}.columns.id",
            "a primary key cannot be `pii`",
        ),
        (
            _column("rating", type="integer", nullable=False, pii="erase"),
            f"{REVIEWS}.columns.rating.pii",
            "column 'rating' of 'reviews' is not nullable: `pii: erase` needs a `replacement`",
        ),
        (
            _table(subject="shopper"),
            f"{REVIEWS}.subject",
            "unknown subject column 'shopper' of table 'reviews' (did you mean 'shopper_id'?)",
        ),
        (
            _table(subject="body"),
            f"{REVIEWS}.subject",
            "subject column 'body' of table 'reviews' is a `text`; a subject is named by a `uuid`",
        ),
        (
            _table(subject=None),
            f"{REVIEWS}.columns.shopper_id.pii",
            "table 'reviews' marks personal data (`pii`) but names no `subject`",
        ),
        (
            _column("shopper_id", type="uuid", nullable=False, pii="keep"),
            f"{REVIEWS}.columns.shopper_id",
            "subject column 'shopper_id' of 'reviews' needs `pii: anonymise` (or `erase`)",
        ),
        (
            _table(subject="id"),
            f"{REVIEWS}.subject",
            "subject column 'id' is the primary key of 'reviews': its rows cannot lose it",
        ),
        (
            _table(erasure="delete"),
            f"{REVIEWS}.columns.rating.pii",
            "the rows of 'reviews' are deleted on erasure (`erasure: delete`): column 'rating' "
            "cannot be `pii: keep`",
        ),
        (
            _column("body", type="string", length=50, pii="anonymise"),
            f"{REVIEWS}.columns.body",
            "`pii: anonymise` on a `string` column needs a `replacement`",
        ),
        (
            _column("body", type="string", length=50, pii="anonymise", replacement=5),
            f"{REVIEWS}.columns.body",
            "replacement 5 does not fit a `string` column",
        ),
        (
            _column("body", type="string", length=3, pii="anonymise", replacement="gone"),
            f"{REVIEWS}.columns.body",
            "replacement 'gone' is longer than length 3",
        ),
        (
            _column(
                "body", type="enum", length=9, values=["a", "b"], pii="anonymise", replacement="c"
            ),
            f"{REVIEWS}.columns.body",
            "replacement 'c' is not one of a, b",
        ),
        (
            _column("body", type="timestamp", nullable=False, pii="erase", replacement="x"),
            f"{REVIEWS}.columns.body",
            "a `timestamp` column takes no `replacement`",
        ),
        (
            _column("body", type="text", pii="erase", pii_keys=["x"]),
            f"{REVIEWS}.columns.body",
            "`pii_keys` apply to `json` columns, not `text`",
        ),
        (
            _column("shipping", type="json", pii="keep", pii_keys=["street"]),
            f"{REVIEWS}.columns.shipping",
            "`pii_keys` go with `pii: erase` or `pii: anonymise`",
        ),
        (
            _column("shipping", type="json", pii="erase", pii_keys=["street"], replacement="x"),
            f"{REVIEWS}.columns.shipping",
            "with `pii_keys`, `erase` sets the keys to null",
        ),
        (
            _column("rating", type="integer", pii="keep", replacement=0),
            f"{REVIEWS}.columns.rating",
            "`replacement` goes with `pii: erase` or `pii: anonymise`",
        ),
        (
            _table(
                indexes=[
                    {
                        "name": "uq_reviews_item",
                        "columns": ["shopper_id", "item_id"],
                        "unique": True,
                    }
                ]
            ),
            f"{REVIEWS}.indexes[0]",
            "unique index 'uq_reviews_item' of 'reviews' would refuse a second erased subject: "
            "erasure writes one fixed value to `shopper_id`",
        ),
        (
            _column("shopper_id", type="uuid", nullable=False, unique=True, pii="anonymise"),
            f"{REVIEWS}.columns.shopper_id",
            "unique column 'shopper_id' of 'reviews' would refuse a second erased subject",
        ),
        (
            _set(("services", "catalog", "tables", "review_votes", "subject_through"), "review"),
            "services.catalog.tables.review_votes.subject_through",
            "unknown table 'review' (did you mean 'reviews'?)",
        ),
        (
            _set(("services", "catalog", "tables", "review_votes", "subject_through"), "items"),
            "services.catalog.tables.review_votes.subject_through",
            "table 'items' names no `subject` column of its own",
        ),
        (
            _set(("gdpr",), None),
            f"{REVIEWS}.subject",
            "a `subject` needs the top-level `gdpr` (`erasure_event`, `subject_key`)",
        ),
        (
            _set(("gdpr", "erasure_event"), "cart.forgoten"),
            "gdpr.erasure_event",
            "unknown event 'cart.forgoten' (did you mean 'cart.forgotten'?)",
        ),
        (
            _set(("gdpr", "subject_key"), "shopper"),
            "gdpr.subject_key",
            "event 'cart.forgotten' has no payload field 'shopper' (did you mean 'shopper_id'?)",
        ),
        (
            _set(("events", "cart.forgotten", "payload", "shopper_id"), "uuid | null"),
            "gdpr.subject_key",
            "payload field 'shopper_id' of 'cart.forgotten' is `uuid | null`",
        ),
        (
            _set(("services", "catalog", "events", "consumes"), ["cart.checked_out"]),
            f"{REVIEWS}.subject",
            "service 'catalog' holds personal data (table 'reviews' names a `subject`) but does "
            "not consume 'cart.forgotten'",
        ),
        (
            _set(("services", "cart", "events", "publishes"), ["cart.checked_out"]),
            "gdpr.erasure_event",
            "no service publishes 'cart.forgotten': the one that does owns the subjects",
        ),
        (
            _set(
                ("services", "catalog", "routes", 0, "path"),
                "/internal/catalog/subjects/{subject_id}",
            ),
            "services.catalog.routes[0].path",
            "route path '/internal/catalog/subjects/{subject_id}' is taken by the route the "
            "platform adds",
        ),
    ],
)
def test_contradictions_are_refused_with_their_place(change: Any, where: str, message: str) -> None:
    data = copy.deepcopy(gdpr_spec())
    change(data)
    issues = _issues(data)
    found = [issue for issue in issues if message in issue]
    assert found, issues
    assert all(issue.startswith("t.yaml:") for issue in issues), issues
    assert any(f": {where}: " in issue for issue in found), found


def test_the_json_schema_explains_each_key() -> None:
    schema = Spec.model_json_schema()
    defs = schema["$defs"]
    for model, key in (
        ("ColumnSpec", "pii"),
        ("ColumnSpec", "pii_keys"),
        ("ColumnSpec", "replacement"),
        ("TableSpec", "subject"),
        ("TableSpec", "subject_through"),
        ("TableSpec", "erasure"),
        ("GdprSpec", "erasure_event"),
        ("GdprSpec", "subject_key"),
    ):
        assert len(defs[model]["properties"][key].get("description", "")) > 30, (model, key)
    assert "erase" in defs["ColumnSpec"]["properties"]["pii"]["description"]
    assert "gdpr" in schema["properties"]


def _platform(tmp_path: Path, data: dict[str, Any]) -> Any:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_platform(spec)


def test_the_owner_calls_each_holder_and_each_holder_erases_on_the_event(tmp_path: Path) -> None:
    data = gdpr_spec()
    cart_spec = data["services"]["cart"]
    del cart_spec["calls"], cart_spec["sagas"], cart_spec["routes"][0]["saga"]
    # The export's calls are declared like every other: without it the spec is refused.
    with pytest.raises(
        SpecError, match=r"services\.cart\.calls: service 'catalog' holds personal data"
    ):
        _platform(tmp_path, data)
    cart_spec["calls"] = ["catalog"]
    platform = _platform(tmp_path, data)
    cart, catalog = platform.service("cart"), platform.service("catalog")
    # Joining is declaring a `subject` (and the owner's call): the route comes with it.
    assert cart.calls == ("catalog",)
    assert cart.personal_data is not None and cart.personal_data.sources == ("catalog",)
    assert catalog.personal_data is not None and catalog.personal_data.applies_erasure
    route = next(route for route in catalog.routes if route.subject_data)
    assert (route.method, route.path, route.auth) == (
        "GET",
        "/internal/catalog/subjects/{subject_id}",
        "service",
    )
    assert 404 not in route.problems
    # No stub is asked for the erasure event (an `on_cart_forgotten` of its own is optional).
    assert "on_cart_forgotten" not in {need.name for need in needed(catalog)}
    assert "on_cart_checked_out" in {need.name for need in needed(catalog)}

    files = render(platform)
    wired = '"cart.forgotten": PERSONAL_DATA.erasure_handler( getattr(handlers, "on_cart_forgotten", None) )'
    assert wired in " ".join(files["services/catalog/app.py"].split())
    declared = files["services/catalog/personal_data.py"]
    assert 'Pii("shopper_id", "anonymise", uuid.UUID(int=0))' in declared
    assert 'Pii("shipping", "erase", keys=("street",))' in declared
    assert 'through=Through(Review, "shopper_id")' in declared
    assert 'Pii("voter", "anonymise", "-")' in declared
    owner = files["services/cart/personal_data.py"]
    assert 'Source("catalog", "/internal/catalog/subjects/{subject_id}")' in owner
    assert "services/cart/personal_data.py" in files and "tables=" not in owner
    assert "PERSONAL_DATA.answer(session, subject_id)" in files["services/catalog/routes.py"]


def test_a_spec_without_personal_data_generates_as_before(tmp_path: Path) -> None:
    files = render(_platform(tmp_path, yaml.safe_load(MINIMAL.read_text())))
    assert not any(name.endswith("personal_data.py") for name in files)
    assert "PERSONAL_DATA" not in files["services/catalog/app.py"]


def test_declaring_personal_data_needs_no_migration(tmp_path: Path) -> None:
    """`pii`, `subject` and `erasure` are metadata: the database schema stays as it was."""
    unmarked = gdpr_spec()
    for table in unmarked["services"]["catalog"]["tables"].values():
        for key in ("subject", "subject_through", "erasure"):
            table.pop(key, None)
        for column in table["columns"].values():
            for key in ("pii", "pii_keys", "replacement"):
                column.pop(key, None)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(unmarked, sort_keys=False))
    handlers = tmp_path / "handlers"
    generate(spec, tmp_path / "out", handlers_dir=handlers)
    versions = tmp_path / "out" / "services" / "catalog" / "migrations" / "versions"
    before = sorted(path.name for path in versions.glob("*.py"))
    assert before
    spec.write_text(yaml.safe_dump(gdpr_spec(), sort_keys=False))
    result = generate(spec, tmp_path / "out", handlers_dir=handlers)
    assert result.written
    assert sorted(path.name for path in versions.glob("*.py")) == before
    models = tmp_path / "out" / "services" / "catalog" / "models.py"
    assert (tmp_path / "out" / "services" / "catalog" / "personal_data.py").exists()
    assert "pii" not in models.read_text()


def test_the_real_spec_declares_orders_payments_and_users() -> None:
    platform = load_platform(ROOT / "spec" / "cloudretail.yaml")
    spec = yaml.safe_load((ROOT / "spec" / "cloudretail.yaml").read_text())
    holders = {
        service.name
        for service in platform.services
        if service.name != "user" and any(table.subject for table in service.tables)
    }
    assert holders == {"order", "payment", "notification", "analytics"}
    assert set(spec["services"]["user"]["calls"]) == holders  # declared, not derived
    order = (GENERATED / "services" / "order" / "personal_data.py").read_text()
    assert 'Pii("user_id", "anonymise", uuid.UUID(int=0))' in order
    assert 'keys=("line1", "line2", "city", "postal_code")' in order
    payment = (GENERATED / "services" / "payment" / "personal_data.py").read_text()
    assert 'Pii("amount", "keep")' in payment and 'Pii("transaction_id", "keep")' in payment
    user = (GENERATED / "services" / "user" / "personal_data.py").read_text()
    assert "delete=True" in user and 'secret=("password", "two_factor_secret")' in user
    for holder in ("order", "payment"):
        assert f'Source("{holder}", "/internal/{holder}/subjects/{{subject_id}}")' in user
        network = (GENERATED / f"k8s/base/network/{holder}-service.yaml").read_text()
        assert "user-service" in network  # the export's calls are let through


@pytest.mark.parametrize(
    ("pii", "stored", "erased"),
    [
        (Pii("a", "erase"), "ada", None),
        (Pii("a", "anonymise", "-"), "ada", "-"),
        (Pii("a", "keep"), "ada", "ada"),
        (Pii("a", "anonymise", "-"), None, None),  # nothing to hide stays nothing
        (
            Pii("a", "erase", keys=("city",)),
            {"city": "Oslo", "cc": "NO"},
            {"city": None, "cc": "NO"},
        ),
        (Pii("a", "erase", keys=("line2",)), {"city": "Oslo"}, {"city": "Oslo"}),
        (Pii("a", "erase", keys=("city",)), ["Oslo"], ["Oslo"]),  # no keys to erase
    ],
)
def test_what_erasure_writes(pii: Pii, stored: Any, erased: Any) -> None:
    assert pii.erased(stored) == erased
