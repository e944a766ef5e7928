"""`sort` on generated list routes: only the spec's sort columns, never a secret column."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cloudretail.generator.checks import check_spec
from cloudretail.generator.loader import load_text
from cloudretail.generator.validation import parse_spec
from cloudretail.runtime.auth import TokenIssuer

from tests.services.conftest import ROOT, service_client

MINIMAL = ROOT / "tests" / "specs" / "minimal.yaml"


@pytest.fixture(autouse=True)
def isolated_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDRETAIL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CLOUDRETAIL_ADMIN_EMAIL", raising=False)
    monkeypatch.delenv("CLOUDRETAIL_ADMIN_PASSWORD", raising=False)


@pytest.mark.parametrize("sort", ["x", "password", "-two_factor_secret", "email", "--id", ""])
async def test_admin_user_list_refuses_sorts_the_spec_does_not_name(
    database_url: str, issuer: TokenIssuer, admin: dict[str, str], sort: str
) -> None:
    async with service_client("user", database_url, issuer) as client:
        response = await client.get("/api/users", params={"sort": sort}, headers=admin)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["loc"] == ["query", "sort"]


@pytest.mark.parametrize("sort", ["id", "-id"])
async def test_a_table_without_sort_columns_sorts_by_its_key(
    database_url: str, issuer: TokenIssuer, admin: dict[str, str], sort: str
) -> None:
    async with service_client("user", database_url, issuer) as client:
        response = await client.get("/api/users", params={"sort": sort}, headers=admin)
    assert response.status_code == 200, response.text


async def test_products_sort_only_by_the_spec_columns(database_url: str, issuer: TokenIssuer):
    async with service_client("product", database_url, issuer) as client:
        allowed = [
            (await client.get("/api/products", params={"sort": sort})).status_code
            for sort in ("name", "-price", "created_at")
        ]
        refused = await client.get("/api/products", params={"sort": "sku"})
    assert allowed == [200, 200, 200]
    assert refused.status_code == 422


def _issues(data: dict) -> list[str]:
    document = load_text(yaml.safe_dump(data, sort_keys=False), "t.yaml")
    return [
        f"{issue.where}: {issue.message}" for issue in check_spec(parse_spec(document), document)
    ]


def test_a_spec_may_not_sort_or_filter_on_a_secret_column() -> None:
    data = yaml.safe_load(MINIMAL.read_text())
    service = next(iter(data["services"].values()))
    table = next(iter(service["tables"].values()))
    table["columns"]["api_key"] = {"type": "string", "length": 64, "secret": True}
    table["sort"] = ["api_key"]
    table["filters"] = [{"name": "key", "column": "api_key", "op": "eq"}]
    issues = _issues(data)
    assert any("sort on secret column 'api_key'" in issue for issue in issues), issues
    assert any("filter on secret column 'api_key'" in issue for issue in issues), issues
