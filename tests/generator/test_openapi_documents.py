"""`generate` writes each app's OpenAPI document into generated/ (services/<name>/ and
eventbus/openapi.json): the app's own `app.openapi()`, with sorted keys, kept current by
`generate --check` like every other file, handler bodies included."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest
from cloudretail.generator import GeneratedFileError, generate, load_platform
from cloudretail.generator.openapi import document_files

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = ROOT / "tests" / "specs" / "minimal.yaml"


def test_each_committed_document_is_what_its_app_serves(in_root: Path) -> None:
    targets = document_files(load_platform(Path("spec/cloudretail.yaml")))
    assert "services/order/openapi.json" in targets and "eventbus/openapi.json" in targets
    for path, module in targets.items():
        text = (ROOT / "generated" / path).read_text()
        committed = json.loads(text)
        assert committed == importlib.import_module(module).create_app().openapi(), path
        assert text == json.dumps(committed, indent=2, sort_keys=True) + "\n", path
    order = json.loads((ROOT / "generated/services/order/openapi.json").read_text())
    # A handler route's body is the handlers' pydantic model, known only to the app.
    body = order["paths"]["/api/orders"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/NewOrder"
    }


def _project(tmp_path: Path) -> tuple[Path, Path, Path]:
    spec = tmp_path / "shop.yaml"
    shutil.copy(MINIMAL, spec)
    return spec, tmp_path / "generated", tmp_path / "handlers"


def test_a_handler_body_change_makes_the_document_stale(tmp_path: Path) -> None:
    spec, out, handlers = _project(tmp_path)
    generate(spec, out, handlers_dir=handlers)  # writes the stubs, and the documents with them
    document = json.loads((out / "services/cart/openapi.json").read_text())
    assert "/api/cart/checkout" in document["paths"]
    assert not generate(spec, out, check=True, handlers_dir=handlers).stale

    cart = handlers / "cart.py"
    cart.write_text(
        cart.read_text()
        + "\n\nfrom pydantic import BaseModel\n\n\nclass Checkout(BaseModel):\n    coupon: str\n\n\n"
        + "async def checkout(ctx):  # noqa\n    return ctx.body(Checkout)\n"
    )
    assert not generate(spec, out, check=True, handlers_dir=handlers).stale  # no `body:` yet
    declared = spec.read_text().replace("handler: checkout,", "handler: checkout, body: Checkout,")
    spec.write_text(declared)
    stale = generate(spec, out, check=True, handlers_dir=handlers)
    assert "services/cart/openapi.json" in stale.plan.changed
    generate(spec, out, handlers_dir=handlers)
    schemas = json.loads((out / "services/cart/openapi.json").read_text())["components"]["schemas"]
    assert schemas["Checkout"]["properties"]["coupon"] == {"title": "Coupon", "type": "string"}


def test_an_app_that_does_not_build_stops_generate_naming_the_line(tmp_path: Path) -> None:
    spec, out, handlers = _project(tmp_path)
    handlers.mkdir()
    (handlers / "__init__.py").write_text("")
    (handlers / "cart.py").write_text("async def checkout(ctx):\n    return 1\n\nbroken = 1 / 0\n")
    with pytest.raises(GeneratedFileError) as failed:
        generate(spec, out, handlers_dir=handlers)
    [line] = failed.value.lines
    assert line.startswith(f"{out}/services/cart/openapi.json: cannot read the app's OpenAPI")
    assert "ZeroDivisionError" in line and "(at handlers/cart.py:4)" in line
    assert not out.exists()  # nothing was written
