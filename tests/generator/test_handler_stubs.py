"""Stubs `generate` adds to `handlers/<service>.py`: what a new file imports, what an existing
file gains, that both pass the project's `ruff check` and `ruff format --check`, and which
folder they go to."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from cloudretail.generator import generate, load_platform
from cloudretail.generator.handlers import plan_stubs, write_stubs
from ruff import find_ruff_bin

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = ROOT / "tests" / "specs" / "minimal.yaml"
RUFF = find_ruff_bin()


def ruff_problems(path: Path) -> str:
    """What the project's `ruff check` (all its rules) and `ruff format --check` say about
    `path`; empty when both pass."""
    config = ["--config", str(ROOT / "pyproject.toml"), "--no-cache"]
    said = []
    for command in (["check", *config], ["format", "--check", "--diff", *config]):
        done = subprocess.run(
            [RUFF, *command, str(path)], cwd=ROOT, capture_output=True, text=True, check=False
        )
        if done.returncode:
            said.append(done.stdout + done.stderr)
    return "\n".join(said)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project as `cloudretail init` lays it out (spec/, handlers/), with the ruff config
    of this one, and the minimal spec."""
    shutil.copyfile(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "spec").mkdir()
    (tmp_path / "handlers").mkdir()
    (tmp_path / "handlers" / "__init__.py").write_text('"""Hand-written domain logic."""\n')
    shutil.copyfile(MINIMAL, tmp_path / "spec" / "cloudretail.yaml")
    return tmp_path


def edit_spec(project: Path, edit) -> None:  # type: ignore[no-untyped-def]
    spec = project / "spec" / "cloudretail.yaml"
    data = yaml.safe_load(spec.read_text())
    edit(data)
    spec.write_text(yaml.safe_dump(data, sort_keys=False))


def generate_into(project: Path) -> None:
    """What `generate` does to handlers/ (without rendering the rest)."""
    platform = load_platform(project / "spec" / "cloudretail.yaml")
    write_stubs(plan_stubs(platform, project / "handlers"))


def test_a_new_file_of_event_consumers_only_imports_what_they_use(project: Path):
    generate_into(project)
    catalog = project / "handlers" / "catalog.py"  # consumes cart.checked_out, no handler route
    text = catalog.read_text()
    assert "async def on_cart_checked_out(ctx: EventContext) -> None:" in text
    assert "Any" not in text and "import Context" not in text and "BaseModel" not in text
    assert ruff_problems(catalog) == ""


def test_a_new_file_of_routes_only_imports_what_they_use(project: Path):
    generate_into(project)
    cart = project / "handlers" / "cart.py"  # one handler route, no consumed event
    text = cart.read_text()
    assert "async def checkout(ctx: Context) -> Any:" in text
    assert "EventContext" not in text and "BaseModel" not in text
    assert ruff_problems(cart) == ""


def test_a_new_file_with_everything_has_its_imports_in_isort_order(project: Path):
    def edit(data: dict) -> None:
        cart = data["services"]["cart"]
        cart["events"]["consumes"] = ["item.created"]
        cart["routes"][0]["body"] = "Checkout"

    edit_spec(project, edit)
    generate_into(project)
    cart = project / "handlers" / "cart.py"
    assert (
        "from __future__ import annotations\n\n"
        "from typing import Any\n\n"
        "from cloudretail.runtime.events.consumer import EventContext\n"
        "from cloudretail.runtime.handlers import Context, not_implemented\n"
        "from pydantic import BaseModel\n\n\n"
    ) in cart.read_text()
    assert ruff_problems(cart) == ""


HAND_WRITTEN = '''"""Cart: hand-written."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from cloudretail.runtime.handlers import Context

FREE_SHIPPING = Decimal("50")


async def checkout(ctx: Context) -> Any:
    """Check the cart out."""
    return {"free_shipping": FREE_SHIPPING}
'''


def test_an_existing_file_gains_sorted_imports_and_stays_ruff_clean(project: Path):
    cart = project / "handlers" / "cart.py"
    cart.write_text(HAND_WRITTEN)
    assert ruff_problems(cart) == ""  # clean before

    def edit(data: dict) -> None:
        cart = data["services"]["cart"]
        cart["events"]["consumes"] = ["item.created"]  # its first consumed event
        cart["routes"][0]["body"] = "Checkout"  # and a body model

    edit_spec(project, edit)
    generate_into(project)
    text = cart.read_text()
    assert text.startswith(
        '"""Cart: hand-written."""\n\n'
        "from __future__ import annotations\n\n"
        "from decimal import Decimal\n"
        "from typing import Any\n\n"
        "from cloudretail.runtime.events.consumer import EventContext\n"
        "from cloudretail.runtime.handlers import Context, not_implemented\n"
        "from pydantic import BaseModel\n\n"
        'FREE_SHIPPING = Decimal("50")\n'
    )
    assert "class Checkout(BaseModel):" in text
    assert "async def on_item_created(ctx: EventContext) -> None:" in text
    assert HAND_WRITTEN.split("FREE_SHIPPING", 1)[1] in text  # the user's code is as it was
    assert ruff_problems(cart) == ""


def test_an_existing_file_keeps_its_unused_imports_and_its_own_layout(project: Path):
    """Only the import block of a file that passes ruff is sorted; an import the file does not
    use (re-exported, say) stays, and a file ruff would reformat is not reformatted."""
    cart = project / "handlers" / "cart.py"
    mine = (
        "import json\n"
        "from cloudretail.runtime.handlers import Context\n"
        "async def checkout(ctx: Context) -> dict:  # not formatted as ruff would\n"
        "    return {'done' : True}\n"
    )
    cart.write_text(mine)
    edit_spec(project, lambda data: data["services"]["cart"]["routes"][0].update(body="Checkout"))
    generate_into(project)
    text = cart.read_text()
    assert text.startswith("import json\n")
    assert "async def checkout(ctx: Context) -> dict:  # not formatted as ruff would\n" in text
    assert "    return {'done' : True}\n" in text
    assert "class Checkout(BaseModel):" in text


def test_stubs_go_to_the_projects_handlers_whatever_the_output_folder(
    project: Path, monkeypatch: pytest.MonkeyPatch
):
    """`generate --out build/generated` stubs into the project's handlers/ (the folder beside
    `spec/`), not into a new build/handlers/ that nothing imports."""
    monkeypatch.chdir(project)
    out = project / "build" / "generated"
    done = generate(Path("spec/cloudretail.yaml"), out)
    assert {change.path.resolve() for change in done.stubs} == {
        (project / "handlers" / "catalog.py").resolve(),
        (project / "handlers" / "cart.py").resolve(),
    }
    assert (project / "handlers" / "cart.py").exists()
    assert not (project / "build" / "handlers").exists()
    # With every handler written, generating elsewhere has nothing to stub.
    assert not generate(project / "spec" / "cloudretail.yaml", project / "elsewhere").stubs


def test_a_spec_not_in_a_spec_folder_has_its_handlers_beside_it(tmp_path: Path):
    shutil.copyfile(MINIMAL, tmp_path / "shop.yaml")
    done = generate(tmp_path / "shop.yaml", tmp_path / "build" / "generated")
    assert {change.path for change in done.stubs} == {
        tmp_path / "handlers" / "catalog.py",
        tmp_path / "handlers" / "cart.py",
    }


def test_without_ruff_new_files_import_what_they_use_and_stubs_still_go_in(
    project: Path, monkeypatch: pytest.MonkeyPatch
):
    """ruff is a development dependency: without it, a new file is still clean and an existing
    one still gets its stubs (the imports it lacks after its last import)."""
    monkeypatch.setattr("cloudretail.generator.handlers._ruff", lambda: None)
    cart = project / "handlers" / "cart.py"
    cart.write_text(HAND_WRITTEN)
    edit_spec(
        project, lambda data: data["services"]["cart"]["events"].update(consumes=["item.created"])
    )
    generate_into(project)
    assert ruff_problems(project / "handlers" / "catalog.py") == ""
    text = cart.read_text()
    assert (
        "from cloudretail.runtime.handlers import Context\nfrom cloudretail.runtime.events.consumer import EventContext\n"
        in text
    )
    assert "async def on_item_created(ctx: EventContext) -> None:" in text
