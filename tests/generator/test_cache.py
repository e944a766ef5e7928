"""The generator's cache saves work whose inputs did not change, and never decides an outcome:
a changed table or revision is planned afresh, and a cache that cannot be used is skipped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cloudretail.generator import cache, check_platform, generate, load_platform
from cloudretail.generator.model import Platform
from cloudretail.generator.targets.migrations import existing_revisions, unchanged_entry
from cloudretail.generator.writer import read_owned

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the project's spec, handlers and generated output, run from its root."""
    for folder in ("spec", "handlers", "generated"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("CLOUDRETAIL_CACHE_DIR", str(folder))
    return folder


def _revisions(out: Path, platform: Platform) -> dict[str, dict[str, str]]:
    existing = read_owned(out)
    return {schema.folder: existing_revisions(schema, existing) for schema in platform.schemas}


def test_validate_with_a_warm_cache_loads_neither_sqlalchemy_nor_jinja(
    project: Path, own_cache: Path
) -> None:
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from cloudretail.generator import check_platform\n"
        "check_platform(Path('spec/cloudretail.yaml'), Path('generated'))\n"
        "print(sorted({'sqlalchemy', 'alembic', 'jinja2'} & set(sys.modules)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def loaded() -> str:
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=project, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert loaded() == "['alembic', 'sqlalchemy']"  # cold: the migrations are planned
    assert loaded() == "[]"  # warm: the plan is known to add nothing
    databases = load_platform(project / "spec" / "cloudretail.yaml").schemas
    assert len(list((own_cache / "migrations").iterdir())) == len(databases)  # one each


def test_a_changed_table_is_planned_although_the_old_one_is_cached(
    project: Path, own_cache: Path
) -> None:
    spec_path, out = project / "spec" / "cloudretail.yaml", project / "generated"
    assert not generate(spec_path, out).stale
    assert not generate(spec_path, out).stale  # the second run takes the cached plans

    spec = yaml.safe_load(spec_path.read_text())
    products = spec["services"]["product"]["tables"]["products"]
    products["columns"]["weight_grams"] = {"type": "integer", "check": ">= 0"}
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = generate(spec_path, out)

    added = [path for path in result.plan.added if "/migrations/versions/" in path]
    assert len(added) == 1 and added[0].startswith("services/product/")
    assert "weight_grams" in (out / added[0]).read_text()


def test_a_cached_plan_holds_only_for_the_same_revisions(project: Path, own_cache: Path) -> None:
    spec_path, out = project / "spec" / "cloudretail.yaml", project / "generated"
    platform = check_platform(spec_path, out)
    schema = platform.schemas[0]
    revisions = _revisions(out, platform)[schema.folder]
    assert cache.has("migrations", unchanged_entry(schema, revisions))
    name = sorted(revisions)[-1]
    edited = {**revisions, name: revisions[name] + "\n# edited\n"}
    assert not cache.has("migrations", unchanged_entry(schema, edited))


@pytest.mark.parametrize("setting", ["unusable", "off"])
def test_generate_works_alike_without_a_usable_cache(
    setting: str, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if setting == "off":
        monkeypatch.setenv("CLOUDRETAIL_NO_CACHE", "1")
    else:
        blocker = tmp_path / "a-file"
        blocker.write_text("not a folder")
        monkeypatch.setenv("CLOUDRETAIL_CACHE_DIR", str(blocker / "cache"))
    assert cache.directory() is None
    result = generate(project / "spec" / "cloudretail.yaml", project / "generated", check=True)
    assert not result.stale
