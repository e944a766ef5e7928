"""A spec change becomes a new Alembic revision that applies on top of existing data."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import yaml
from cloudretail.generator import generate
from cloudretail.runtime.migrate import downgrade, upgrade

from tests.servers import drop_database, fresh_database
from tests.services.conftest import ROOT


def _evolve(spec: dict) -> None:
    product = spec["services"]["product"]
    table = product["tables"]["products"]
    table["columns"]["weight_grams"] = {"type": "integer", "check": ">= 0"}
    table["indexes"].append({"name": "idx_products_weight", "columns": ["weight_grams"]})
    product["tables"]["product_reviews"] = {
        "columns": {
            "id": {"type": "uuid", "primary_key": True, "default": "gen_random_uuid"},
            "product_id": {"type": "uuid", "nullable": False},
            "rating": {"type": "integer", "nullable": False, "check": ">= 1"},
            "body": {"type": "text"},
        },
        "indexes": [{"name": "idx_product_reviews_product_id", "columns": ["product_id"]}],
    }


def _versions(out: Path) -> dict[str, bytes]:
    folder = out / "services" / "product" / "migrations" / "versions"
    return {path.name: path.read_bytes() for path in sorted(folder.glob("*.py"))}


async def _query(url: str, sql: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url)
    try:
        return await connection.fetch(sql)
    finally:
        await connection.close()


def test_added_column_index_and_table_become_one_new_revision(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(ROOT)
    spec_path = tmp_path / "cloudretail.yaml"
    spec = yaml.safe_load((ROOT / "spec" / "cloudretail.yaml").read_text())
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = tmp_path / "generated"
    generate(spec_path, out, handlers_dir=tmp_path / "handlers")
    before = _versions(out)
    assert len(before) == 1

    # Unchanged spec: no new revision, nothing rewritten.
    assert not generate(spec_path, out, handlers_dir=tmp_path / "handlers").plan.stale

    _evolve(spec)
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = generate(spec_path, out, handlers_dir=tmp_path / "handlers")
    after = _versions(out)
    assert len(after) == 2
    assert {name: after[name] for name in before} == before  # earlier revisions untouched
    (new_name,) = set(after) - set(before)
    assert new_name.startswith("0002_")
    assert f"services/product/migrations/versions/{new_name}" in result.plan.added
    new_text = after[new_name].decode()
    assert "weight_grams" in new_text and "product_reviews" in new_text
    assert "idx_products_weight" in new_text
    assert "drop_table" not in new_text.split("def downgrade")[0]

    # Generating again is stable: same revision, same bytes.
    assert not generate(spec_path, out, handlers_dir=tmp_path / "handlers").plan.stale

    # Apply for real on PostgreSQL: first the old head with data in it, then the new one.
    url = fresh_database("cloudretail_test_evolve")
    ini = out / "services" / "product" / "alembic.ini"
    first_revision = next(iter(before)).split("_")[1]
    try:
        upgrade(ini, url, first_revision)
        asyncio.run(
            _query(
                url,
                "INSERT INTO products (id, name, price, sku) "
                "VALUES (gen_random_uuid(), 'Lamp', 19.99, 'L-1')",
            )
        )
        upgrade(ini, url)
        rows = asyncio.run(_query(url, "SELECT name, price, weight_grams FROM products"))
        assert [(r["name"], str(r["price"]), r["weight_grams"]) for r in rows] == [
            ("Lamp", "19.99", None)
        ]
        tables = asyncio.run(
            _query(url, "SELECT tablename FROM pg_tables WHERE schemaname='public'")
        )
        assert "product_reviews" in {r["tablename"] for r in tables}

        downgrade(ini, url, "-1")
        columns = asyncio.run(
            _query(
                url,
                "SELECT column_name FROM information_schema.columns WHERE table_name='products'",
            )
        )
        assert "weight_grams" not in {r["column_name"] for r in columns}
        tables = asyncio.run(
            _query(url, "SELECT tablename FROM pg_tables WHERE schemaname='public'")
        )
        assert "product_reviews" not in {r["tablename"] for r in tables}
        rows = asyncio.run(_query(url, "SELECT name FROM products"))
        assert [r["name"] for r in rows] == ["Lamp"]
    finally:
        drop_database(url)


def test_dropping_a_column_is_refused_unless_allowed(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(ROOT)
    spec_path = tmp_path / "cloudretail.yaml"
    spec = yaml.safe_load((ROOT / "spec" / "cloudretail.yaml").read_text())
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = tmp_path / "generated"
    generate(spec_path, out, handlers_dir=tmp_path / "handlers")
    del spec["services"]["product"]["tables"]["products"]["columns"]["image_url"]
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    from cloudretail.generator.targets.migrations import MigrationRefusedError

    try:
        generate(spec_path, out, handlers_dir=tmp_path / "handlers")
    except MigrationRefusedError as error:
        assert "image_url" in str(error)
    else:
        raise AssertionError("dropping a column must be refused")
    assert len(_versions(out)) == 1  # nothing written

    spec["services"]["product"]["tables"]["products"]["allow_destructive"] = True
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    generate(spec_path, out, handlers_dir=tmp_path / "handlers")
    assert len(_versions(out)) == 2


def test_a_rename_becomes_alter_column(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(ROOT)
    spec_path = tmp_path / "cloudretail.yaml"
    spec = yaml.safe_load((ROOT / "spec" / "cloudretail.yaml").read_text())
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = tmp_path / "generated"
    generate(spec_path, out, handlers_dir=tmp_path / "handlers")
    columns = spec["services"]["product"]["tables"]["products"]["columns"]
    spec["services"]["product"]["tables"]["products"]["columns"] = {
        ("picture_url" if name == "image_url" else name): (
            {**column, "renamed_from": "image_url"} if name == "image_url" else column
        )
        for name, column in columns.items()
    }
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    generate(spec_path, out, handlers_dir=tmp_path / "handlers")
    (new,) = [text for name, text in _versions(out).items() if name.startswith("0002_")]
    upgrade_body = new.decode().split("def downgrade")[0]
    assert 'new_column_name="picture_url"' in upgrade_body
    assert "drop_column" not in upgrade_body
