"""`encrypted: true` in the spec: what may be encrypted, and what the generator makes of it
(an EncryptedText model column on TEXT storage, the service told its encrypted columns, the
key ring wired into the deployments). The cipher itself is tests/runtime/test_crypto.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from cloudretail.generator.checks import check_spec
from cloudretail.generator.loader import load_text
from cloudretail.generator.validation import parse_spec

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = ROOT / "tests" / "specs" / "minimal.yaml"
GENERATED = ROOT / "generated"


def _issues(change: dict[str, Any], **extra: Any) -> list[str]:
    data = yaml.safe_load(MINIMAL.read_text())
    service = next(iter(data["services"].values()))
    table = next(iter(service["tables"].values()))
    table["columns"]["note"] = change
    table.update(extra)
    document = load_text(yaml.safe_dump(data, sort_keys=False), "t.yaml")
    return [
        f"{issue.location}: {issue.where}: {issue.message}"
        for issue in check_spec(parse_spec(document), document)
    ]


def test_a_string_or_text_column_may_be_encrypted() -> None:
    assert _issues({"type": "string", "length": 200, "encrypted": True}) == []
    assert _issues({"type": "text", "encrypted": True}) == []


@pytest.mark.parametrize(
    ("column", "extra", "message"),
    [
        (
            {"type": "integer", "encrypted": True},
            {},
            "`encrypted` applies to `string` or `text` columns, not `integer`",
        ),
        (
            {"type": "string", "length": 9, "encrypted": True, "unique": True},
            {},
            "an encrypted column cannot be unique",
        ),
        (
            {"type": "text", "encrypted": True, "default": "x"},
            {},
            "an encrypted column takes no default",
        ),
        ({"type": "text", "encrypted": True}, {"sort": ["note"]}, "sort on encrypted column"),
        (
            {"type": "text", "encrypted": True},
            {"filters": [{"name": "note", "column": "note", "op": "eq"}]},
            "filter on encrypted column",
        ),
        (
            {"type": "text", "encrypted": True},
            {"indexes": ["note"]},
            "index on encrypted column",
        ),
    ],
)
def test_what_the_database_would_have_to_compare_cannot_be_encrypted(
    column: dict[str, Any], extra: dict[str, Any], message: str
) -> None:
    issues = _issues(column, **extra)
    assert any(message in issue for issue in issues), issues
    assert all(issue.startswith("t.yaml:") for issue in issues)


def test_the_seed_stores_the_two_factor_secret_encrypted() -> None:
    models = (GENERATED / "services" / "user" / "models.py").read_text()
    assert 'mapped_column(EncryptedText("users.two_factor_secret"))' in models
    app = (GENERATED / "services" / "user" / "app.py").read_text()
    assert 'ENCRYPTED_COLUMNS = ("users.two_factor_secret",)' in app
    assert "encrypted_columns=ENCRYPTED_COLUMNS" in app
    # Storage is TEXT (ciphertext is longer than the plaintext the API allows).
    revisions = sorted((GENERATED / "services" / "user" / "migrations" / "versions").glob("*.py"))
    assert "type_=sa.Text()" in revisions[-1].read_text()
    deployment = (GENERATED / "k8s/base/apps/user-service/deployment.yaml").read_text()
    assert "name: ENCRYPTION_KEYS" in deployment and "name: cloudretail-encryption" in deployment
    other = (GENERATED / "k8s/base/apps/order-service/deployment.yaml").read_text()
    assert "ENCRYPTION_KEYS" not in other


def test_compose_runs_with_the_development_key_ring_that_production_refuses() -> None:
    from cloudretail.generator.targets.compose import DEVELOPMENT_KEYS as COMPOSE_KEYS
    from cloudretail.runtime.crypto import DEVELOPMENT_KEYS

    assert COMPOSE_KEYS == DEVELOPMENT_KEYS
    compose = yaml.safe_load((GENERATED / "compose.yaml").read_text())
    user = compose["services"]["user-service"]["environment"]
    assert user["ENCRYPTION_KEYS"] == "${ENCRYPTION_KEYS:-" + DEVELOPMENT_KEYS + "}"
    assert "ENCRYPTION_KEYS" not in compose["services"]["order-service"]["environment"]
