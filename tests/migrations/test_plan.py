"""plan_migration: what it writes, and when it refuses to."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from cloudretail.generator.migrations import DestructiveChangeError, NewRevision, plan_migration

from tests.migrations.helpers import (
    HEADER,
    Chain,
    add_categories,
    module_attrs,
    op_calls,
    products_schema,
    shop_schema,
    with_weight,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def chain() -> Chain:
    """A service with its initial revision already written."""
    chain = Chain()
    chain.advance(products_schema())
    return chain


def only(chain: Chain) -> NewRevision:
    ((filename, text),) = chain.files.items()
    return NewRevision(filename, text)


# ----------------------------------------------------------------------------- first revision


def test_initial_revision_creates_the_whole_schema(chain: Chain) -> None:
    revision = only(chain)
    assert re.fullmatch(r"0001_[0-9a-f]{12}_initial_schema\.py", revision.filename)
    text = revision.text
    assert text.startswith(HEADER + "\n")
    assert text.endswith("\n") and not text.endswith("\n\n")
    attrs = module_attrs(text)
    assert attrs["revision"] == revision.filename[5:17]
    assert attrs["down_revision"] is None
    assert attrs["branch_labels"] is None and attrs["depends_on"] is None
    assert "def upgrade() -> None:" in text and "def downgrade() -> None:" in text

    assert op_calls(text, "upgrade") == ["create_table", "create_index"]
    assert op_calls(text, "downgrade") == ["drop_index", "drop_table"]
    for fragment in [
        'sa.Column("id", sa.Uuid(), nullable=False)',
        'sa.Column("name", sa.String(length=255), nullable=False)',
        'sa.Column("price", sa.Numeric(precision=10, scale=2), nullable=False)',
        'sa.Column("sku", sa.String(length=100), nullable=False)',
        'sa.Column("description", sa.Text(), nullable=True)',
        'sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")',
        'sa.Column("currency", sa.String(length=3), server_default="USD", nullable=True)',
        'sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=True)',
        'server_default=sa.text("false"), nullable=False',
        'server_default=sa.text("CURRENT_TIMESTAMP")',
        "sa.DateTime(timezone=True)",
        'sa.CheckConstraint("price >= 0", name="ck_products_price")',
        'sa.PrimaryKeyConstraint("id")',
        'sa.UniqueConstraint("sku", name="uq_products_sku")',
        'op.create_index("idx_products_price", "products", ["price"], unique=False)',
        "import sqlalchemy as sa\nfrom alembic import op\nfrom sqlalchemy.dialects import postgresql\n",
    ]:
        assert fragment in text, fragment
    # no timestamps, paths or tool versions
    assert "Create Date" not in text and "/" not in text.split('"""')[2]


def test_tables_and_indexes_come_in_a_fixed_order() -> None:
    metadata = add_categories(with_weight())
    text = plan_migration(metadata, {}, service="product")
    assert text is not None
    body = text.text
    assert body.index('"categories"') < body.index('"products"')  # FK-free: by name
    assert body.index('"idx_products_price"') < body.index('"idx_products_weight"')


def test_unchanged_schema_gives_no_revision(chain: Chain) -> None:
    assert chain.plan(products_schema()) is None


# ----------------------------------------------------------------------------- later revisions


def test_added_column_and_index(chain: Chain) -> None:
    first = only(chain)
    second = chain.advance(with_weight())

    assert re.fullmatch(r"0002_[0-9a-f]{12}_add_products_weight\.py", second.filename)
    assert module_attrs(second.text)["down_revision"] == module_attrs(first.text)["revision"]
    assert op_calls(second.text, "upgrade") == ["add_column", "create_index"]
    assert op_calls(second.text, "downgrade") == ["drop_index", "drop_column"]
    assert 'sa.Column("weight", sa.Numeric(precision=8, scale=3), nullable=True)' in second.text
    assert "postgresql" not in second.text  # imports only what it uses
    # the first revision is untouched, and planning it again gives the same bytes
    assert chain.files[first.filename] == first.text
    assert plan_migration(products_schema(), {}, service="product") == first
    assert chain.plan(with_weight()) is None


def test_added_table(chain: Chain) -> None:
    revision = chain.advance(add_categories(products_schema()))
    assert revision.filename.endswith("_create_categories.py")
    assert op_calls(revision.text, "upgrade") == ["create_table"]
    assert op_calls(revision.text, "downgrade") == ["drop_table"]
    assert 'sa.CheckConstraint("position >= 0", name="ck_categories_position")' in revision.text
    assert chain.plan(add_categories(products_schema())) is None


def test_rename_is_an_alter_column(chain: Chain) -> None:
    renames = {("products", "title"): "name"}
    revision = chain.advance(products_schema(name="title"), renames=renames)
    assert revision.filename.endswith("_rename_products_name_to_title.py")
    assert op_calls(revision.text, "upgrade") == ["alter_column"]
    assert op_calls(revision.text, "downgrade") == ["alter_column"]
    upgrade, downgrade = revision.text.split("def downgrade")
    assert '"name",' in upgrade and 'new_column_name="title"' in upgrade
    assert '"title",' in downgrade and 'new_column_name="name"' in downgrade
    assert "drop_column" not in revision.text and "add_column" not in revision.text
    # the spec keeps saying renamed_from: once applied, nothing more to do
    assert chain.plan(products_schema(name="title"), renames=renames) is None


def test_rename_keeps_indexes_and_constraints_on_the_column(chain: Chain) -> None:
    renames = {("products", "cost"): "price"}
    metadata = products_schema(price_name="cost")  # same CHECK name, index on the new name
    revision = chain.advance(metadata, renames=renames)
    assert op_calls(revision.text, "upgrade") == ["alter_column"]
    assert chain.plan(metadata, renames=renames) is None


def test_rename_and_widen_in_one_alter(chain: Chain) -> None:
    renames = {("products", "title"): "name"}
    revision = chain.advance(products_schema(name="title", name_length=500), renames=renames)
    assert op_calls(revision.text, "upgrade") == ["alter_column"]
    assert "type_=sa.String(length=500)" in revision.text


def test_dropped_column_is_refused_unless_allowed(chain: Chain) -> None:
    with pytest.raises(DestructiveChangeError) as error:
        chain.plan(products_schema(with_description=False))
    assert error.value.messages == [
        "table 'products': dropping column 'description' loses data; mark the change allowed "
        "in the spec (allow_destructive) or add renamed_from"
    ]
    assert isinstance(error.value, ValueError)

    revision = chain.advance(products_schema(with_description=False), allow_destructive=True)
    assert revision.filename.endswith("_drop_products_description.py")
    assert op_calls(revision.text, "upgrade") == ["drop_column"]
    assert op_calls(revision.text, "downgrade") == ["add_column"]
    assert 'sa.Column("description", sa.Text(), nullable=True)' in revision.text
    assert chain.plan(products_schema(with_description=False)) is None


def test_dropped_unique_column_takes_its_constraint_along(chain: Chain) -> None:
    revision = chain.advance(products_schema(with_sku=False), allow_destructive=True)
    assert op_calls(revision.text, "upgrade") == ["drop_constraint", "drop_column"]
    assert op_calls(revision.text, "downgrade") == ["add_column", "create_unique_constraint"]


def test_unnamed_unique_gets_the_postgresql_name() -> None:
    """Alembic cannot drop a constraint without a name; PostgreSQL would call it this."""
    chain = Chain()
    chain.advance(products_schema(with_sku=False))
    metadata = products_schema(with_sku=False)
    metadata.tables["products"].append_column(sa.Column("sku", sa.String(100), unique=True))
    added = chain.advance(metadata)
    assert op_calls(added.text, "upgrade") == ["add_column", "create_unique_constraint"]
    assert 'batch_op.create_unique_constraint("products_sku_key", ["sku"])' in added.text
    assert chain.plan(metadata) is None

    dropped = chain.advance(products_schema(with_sku=False), allow_destructive=True)
    assert op_calls(dropped.text, "upgrade") == ["drop_constraint", "drop_column"]
    assert 'batch_op.drop_constraint("products_sku_key", type_="unique")' in dropped.text
    assert chain.plan(products_schema(with_sku=False)) is None


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            products_schema(name_length=100),
            "table 'products': column 'name': narrowing the type from VARCHAR(255) to "
            "VARCHAR(100) may lose data; mark the change allowed in the spec (allow_destructive)",
        ),
        (
            products_schema(price=sa.Numeric(10, 1)),
            "table 'products': column 'price': narrowing the type from NUMERIC(10, 2) to "
            "NUMERIC(10, 1) may lose data; mark the change allowed in the spec (allow_destructive)",
        ),
        (
            products_schema(price=sa.Numeric(8, 2)),
            "table 'products': column 'price': narrowing the type from NUMERIC(10, 2) to "
            "NUMERIC(8, 2) may lose data; mark the change allowed in the spec (allow_destructive)",
        ),
    ],
    ids=["string", "numeric-scale", "numeric-precision"],
)
def test_narrowed_type_is_refused_unless_allowed(
    chain: Chain, schema: sa.MetaData, message: str
) -> None:
    with pytest.raises(DestructiveChangeError) as error:
        chain.plan(schema)
    assert error.value.messages == [message]
    revision = chain.advance(schema, allow_destructive=True)
    assert op_calls(revision.text, "upgrade") == ["alter_column"]
    assert chain.plan(schema) is None


def test_widened_type_is_not_destructive(chain: Chain) -> None:
    revision = chain.advance(products_schema(name_length=500, price=sa.Numeric(12, 3)))
    assert op_calls(revision.text, "upgrade") == ["alter_column", "alter_column"]
    assert "existing_type=sa.String(length=255)" in revision.text


def test_dropped_table_is_refused_unless_allowed(chain: Chain) -> None:
    with pytest.raises(DestructiveChangeError, match="dropping the table"):
        chain.plan(add_categories(sa.MetaData()))
    revision = chain.advance(add_categories(sa.MetaData()), allow_destructive=True)
    assert op_calls(revision.text, "upgrade") == [
        "create_table",
        "drop_index",
        "drop_table",
    ]
    # the downgrade recreates the dropped table exactly, portable types included
    downgrade = revision.text.split("def downgrade")[1]
    assert "postgresql.JSONB(astext_type=sa.Text())" in downgrade
    assert 'server_default=sa.text("false")' in downgrade
    assert 'sa.CheckConstraint("price >= 0", name="ck_products_price")' in downgrade


def test_changed_server_default_and_nullability(chain: Chain) -> None:
    metadata = products_schema()
    table = metadata.tables["products"]
    table.c.is_active.server_default = sa.DefaultClause(sa.text("false"))
    table.c.description.nullable = False
    revision = chain.advance(metadata)
    assert op_calls(revision.text, "upgrade") == ["alter_column", "alter_column"]
    upgrade, downgrade = revision.text.split("def downgrade")
    assert 'server_default=sa.text("false")' in upgrade
    assert 'server_default=sa.text("true")' in downgrade
    assert chain.plan(metadata) is None


def test_types_sqlite_cannot_tell_apart_are_compared(chain: Chain) -> None:
    """DATETIME loses the time zone and JSON the JSONB variant on SQLite; not here."""
    metadata = products_schema()
    table = metadata.tables["products"]
    table.c.created_at.type = sa.DateTime()
    table.c.attributes.type = sa.JSON()
    revision = chain.advance(metadata)
    assert op_calls(revision.text, "upgrade") == ["alter_column", "alter_column"]
    assert "type_=sa.DateTime()" in revision.text and "type_=sa.JSON()" in revision.text
    assert chain.plan(metadata) is None


def test_added_check_constraint_by_name(chain: Chain) -> None:
    metadata = products_schema()
    metadata.tables["products"].append_constraint(
        sa.CheckConstraint("char_length(currency) = 3", name="ck_products_currency")
    )
    revision = chain.advance(metadata)
    assert op_calls(revision.text, "upgrade") == ["create_check_constraint"]
    assert op_calls(revision.text, "downgrade") == ["drop_constraint"]
    assert chain.plan(metadata) is None


def test_a_long_history_stays_idempotent(chain: Chain) -> None:
    steps = [
        with_weight(),
        add_categories(with_weight()),
        add_categories(products_schema(name="title", name_length=300)),
        add_categories(products_schema(name="title", name_length=300, with_sku=False)),
    ]
    renames = {("products", "title"): "name"}
    for number, schema in enumerate(steps, start=2):
        revision = chain.advance(schema, renames=renames, allow_destructive=True)
        assert revision.filename.startswith(f"{number:04d}_")
        assert chain.plan(schema, renames=renames) is None


# ----------------------------------------------------------------------------- determinism


def test_same_inputs_same_bytes(chain: Chain) -> None:
    one = chain.plan(add_categories(with_weight()))
    two = chain.plan(add_categories(with_weight()))
    assert one == two
    assert one is not None and one.filename == two.filename  # type: ignore[union-attr]


def test_same_bytes_across_processes() -> None:
    """Set iteration order changes with the hash seed; the output must not."""
    script = (
        "import sys\n"
        "from tests.migrations.helpers import Chain, add_categories, products_schema, with_weight\n"
        "chain = Chain()\n"
        "chain.advance(products_schema(with_sku=False))\n"
        "rev = chain.plan(add_categories(with_weight()), allow_destructive=True)\n"
        "sys.stdout.write(rev.filename + '\\n' + rev.text)\n"
        "from tests.migrations.helpers import shop_schema\n"
        "shop = Chain()\n"
        "shop.advance(shop_schema(buyer_email=True))\n"
        "rev = shop.plan(shop_schema(orders=False), allow_destructive=True)\n"
        "sys.stdout.write(rev.filename + '\\n' + rev.text)\n"
        "rev = shop.plan(shop_schema(user_fk=False), allow_destructive=True)\n"
        "sys.stdout.write(rev.filename + '\\n' + rev.text)\n"
    )
    outputs = set()
    for seed in ("0", "1", "2", "12345"):
        result = subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        )
        outputs.add(result.stdout)
    assert len(outputs) == 1


def test_revision_id_depends_on_content_and_parent(chain: Chain) -> None:
    other = Chain()
    other.advance(products_schema(with_description=False))
    mine = chain.plan(with_weight())
    theirs = other.plan(
        products_schema(
            with_description=False,
            extra=[
                sa.Column("weight", sa.Numeric(8, 3)),
                sa.Index("idx_products_weight", "weight"),
            ],
        )
    )
    assert mine is not None and theirs is not None
    assert mine.filename != theirs.filename


# ----------------------------------------------------------------------------- bad input


def test_branching_history_is_rejected(chain: Chain) -> None:
    first = only(chain)
    second = chain.advance(with_weight())
    fork = plan_migration(
        add_categories(products_schema()), {first.filename: first.text}, service="product"
    )
    assert fork is not None
    files = {**chain.files, fork.filename.replace("0002", "0003"): fork.text}
    assert second.filename != fork.filename
    with pytest.raises(ValueError, match="branch"):
        plan_migration(with_weight(), files, service="product")


def test_missing_parent_is_rejected(chain: Chain) -> None:
    second = chain.advance(with_weight())
    with pytest.raises(ValueError, match="missing"):
        plan_migration(with_weight(), {second.filename: second.text}, service="product")


def test_non_revision_files_are_ignored(chain: Chain) -> None:
    files = {**chain.files, "__init__.py": "", "README.md": "not python"}
    assert plan_migration(products_schema(), files, service="product") is None


def test_foreign_keys_get_postgresql_names_and_stay_idempotent() -> None:
    chain = Chain()
    chain.advance(shop_schema(orders=False))
    created = chain.advance(shop_schema())
    assert op_calls(created.text, "upgrade") == ["create_table"]
    assert (
        'sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="orders_user_id_fkey")'
        in created.text
    )

    added = chain.advance(shop_schema(buyer_email=True))
    assert op_calls(added.text, "upgrade") == ["add_column", "create_foreign_key"]
    assert (
        'batch_op.create_foreign_key("orders_buyer_email_fkey", "users", ["buyer_email"], ["email"])'
        in added.text
    )
    assert chain.plan(shop_schema(buyer_email=True)) is None

    dropped = chain.advance(shop_schema(user_fk=False), allow_destructive=True)
    assert op_calls(dropped.text, "upgrade") == [
        "drop_constraint",
        "drop_constraint",
        "drop_column",
    ]
    assert dropped.text.index("orders_buyer_email_fkey") < dropped.text.index("orders_user_id_fkey")
    assert op_calls(dropped.text, "downgrade") == [
        "add_column",
        "create_foreign_key",
        "create_foreign_key",
    ]
    assert chain.plan(shop_schema(user_fk=False)) is None

    gone = chain.advance(shop_schema(orders=False), allow_destructive=True)
    assert op_calls(gone.text, "upgrade") == ["drop_table"]


def test_type_bound_check_constraints_stay_idempotent() -> None:
    """Enum / Boolean CHECKs come and go with their column's type, not on their own."""

    def schema() -> sa.MetaData:
        metadata = sa.MetaData(naming_convention={"ck": "ck_%(table_name)s_%(constraint_name)s"})
        sa.Table(
            "flags",
            metadata,
            sa.Column("id", sa.Integer(), primary_key=True),
            sa.Column("on", sa.Boolean(create_constraint=True, name="on")),
            sa.Column(
                "state",
                sa.Enum("a", "b", name="state", native_enum=False, create_constraint=True),
            ),
        )
        return metadata

    chain = Chain()
    chain.advance(schema())
    assert chain.plan(schema()) is None


def test_changed_literal_default(chain: Chain) -> None:
    metadata = products_schema()
    metadata.tables["products"].c.currency.server_default = sa.DefaultClause("EUR")
    revision = chain.advance(metadata)
    upgrade, downgrade = revision.text.split("def downgrade")
    assert 'server_default="EUR"' in upgrade and 'server_default="USD"' in downgrade
    assert chain.plan(metadata) is None
