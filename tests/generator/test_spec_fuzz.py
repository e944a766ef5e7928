"""The spec is input too: random and mutated specs fed to `cloudretail validate` and
`cloudretail generate`, in process, on copies in a temporary folder (never `generated/`).

Each example starts from a copy of a small, already generated project (the minimal test spec
or the real platform spec, its output folder and handler stubs; or one of the invalid test
specs), mutates the spec (deletes a key, changes a scalar's type, renames a reference,
duplicates an entry, drops, renames, retypes or resizes a column, adds a column or a table,
writes a description with quotes or line breaks, edits the text, or replaces the whole file
with random YAML or text) or corrupts the existing migration revisions (a copied revision that
branches the history, owned or not, a garbage or undecodable revision, a missing parent).
The properties, for both commands:

- never a traceback: no uncaught exception; the exit code is 0, or 2 for bad input
  (1 is only for `generate --check` finding stale output);
- never a partial write: when a command refuses, every file of the project is byte for byte
  what it was before;
- every refusal is located: each problem starts with `FILE:LINE:COLUMN: ` in the spec, or
  names the path of the generated file (a revision) that is wrong;
- `validate` accepts no spec that `generate` refuses;
- a successful `generate` keeps every existing revision byte for byte, leaves one Alembic
  head per database, writes Python, YAML and JSON that parse, and output that
  `generate --check` then finds up to date.

Bounded: derandomized (the same examples every run), a modest number of examples and a
per-example deadline; CLOUDRETAIL_FUZZ_EXAMPLES raises the count for a longer hunt and
CLOUDRETAIL_FUZZ_SEED=<n> hunts other examples.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from alembic.script import ScriptDirectory
from cloudretail.cli import app
from cloudretail.generator import source_name
from cloudretail.generator.writer import MANIFEST
from hypothesis import HealthCheck, event, given, seed, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

ROOT = Path(__file__).resolve().parents[2]
BASES = {
    "minimal": ROOT / "tests" / "specs" / "minimal.yaml",
    "platform": ROOT / "spec" / "cloudretail.yaml",
}
INVALID = sorted((ROOT / "tests" / "specs" / "invalid").glob("*.yaml"))
EXAMPLES = int(os.environ.get("CLOUDRETAIL_FUZZ_EXAMPLES", "0"))
SEED = os.environ.get("CLOUDRETAIL_FUZZ_SEED")  # a hunt elsewhere than the fixed examples
FUZZ = settings(
    derandomize=SEED is None,
    database=None,
    deadline=timedelta(seconds=20),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
hunt: Callable[[Callable[..., None]], Callable[..., None]] = (
    seed(int(SEED)) if SEED else lambda test: test
)
SUMMARY = re.compile(r"^\d+ problems? found; nothing was written\.$")
runner = CliRunner()


# ----------------------------------------------------------------------------- projects


@pytest.fixture(scope="module", autouse=True)
def _templates_compiled_once() -> Iterator[None]:
    """Render's Jinja environment compiles every template on each call; the examples share
    one compiled environment so that the hunt spends its time on the spec, not on Jinja."""
    module = sys.modules["cloudretail.generator.render"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "environment", functools.lru_cache(maxsize=None)(module.environment))
        yield


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One generated project per base spec: spec.yaml, out/ (with revisions), handlers/."""
    made = {}
    for name, spec in BASES.items():
        root = tmp_path_factory.mktemp(f"project-{name}")
        shutil.copyfile(spec, root / "spec.yaml")
        handlers = ROOT / "handlers"
        if name == "platform":
            shutil.copytree(handlers, root / "handlers", ignore=shutil.ignore_patterns("__py*"))
        result = _generate(root)
        assert result.exit_code == 0, result.output
        made[name] = root
    return made


def _generate(root: Path, *extra: str) -> Result:
    args = ["generate", "--spec", str(root / "spec.yaml"), "--out", str(root / "out")]
    return runner.invoke(app, [*args, "--handlers", str(root / "handlers"), *extra])


def _validate(root: Path) -> Result:
    args = ["validate", str(root / "spec.yaml"), "--out", str(root / "out")]
    return runner.invoke(app, [*args, "--handlers", str(root / "handlers")])


def _files(root: Path) -> dict[str, bytes]:
    """Every file of a project (its spec aside), by path: what a refusal must leave alone."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != "spec.yaml"
    }


# ----------------------------------------------------------------------------- mutations

PathKey = tuple[str | int, ...]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", "0", "yes", "null", "~", "1e999", "10s", "-1", "uuid", "a b", "x" * 300]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
identifiers = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True) | st.sampled_from(
    ["id", "select", "class", "outbox", "metadata", "items", "catalog", "order", "ID", "a-b"]
)
column_types = st.sampled_from(
    [
        "uuid",
        "string",
        "text",
        "integer",
        "bigint",
        "decimal",
        "boolean",
        "timestamp",
        "json",
        "enum",
    ]
)


def _paths(node: Any, prefix: PathKey = ()) -> list[PathKey]:
    found: list[PathKey] = []
    items: list[tuple[str | int, Any]] = []
    if isinstance(node, dict):
        items = list(node.items())
    elif isinstance(node, list):
        items = list(enumerate(node))
    for key, child in items:
        found.append((*prefix, key))
        found += _paths(child, (*prefix, key))
    return found


def _at(node: Any, path: PathKey) -> Any:
    for part in path:
        node = node[part]
    return node


def _tables(spec: Any) -> list[PathKey]:
    services = spec.get("services") if isinstance(spec, dict) else None
    if not isinstance(services, dict):
        return []
    return [
        ("services", service, "tables", table)
        for service, body in services.items()
        if isinstance(body, dict) and isinstance(body.get("tables"), dict)
        for table, table_body in body["tables"].items()
        if isinstance(table_body, dict) and isinstance(table_body.get("columns"), dict)
    ]


def _pick(data: st.DataObject, options: list[Any], label: str) -> Any:
    return data.draw(st.sampled_from(options), label=label) if options else None


def delete_key(data: st.DataObject, spec: Any) -> None:
    path = _pick(data, [p for p in _paths(spec) if isinstance(p[-1], str)], "delete")
    if path:
        del _at(spec, path[:-1])[path[-1]]


def retype(data: st.DataObject, spec: Any) -> None:
    path = _pick(data, _paths(spec), "retype")
    if path:
        _at(spec, path[:-1])[path[-1]] = data.draw(values, label="value")


def rename_reference(data: st.DataObject, spec: Any) -> None:
    """A string value changed a little, or swapped for another name the spec uses."""
    paths = _paths(spec)
    strings = [p for p in paths if isinstance(_at(spec, p), str)]
    names = sorted({str(p[-1]) for p in paths if isinstance(p[-1], str)})
    path = _pick(data, strings, "rename")
    if path:
        old = _at(spec, path)
        new = data.draw(
            st.sampled_from([old + "x", old.upper(), old[:-1], f"{old}.{old}"])
            | st.sampled_from(names),
            label="new name",
        )
        _at(spec, path[:-1])[path[-1]] = new


def duplicate_entry(data: st.DataObject, spec: Any) -> None:
    """A list item twice, or a mapping entry copied under a new key."""
    containers = [
        p for p in [(), *_paths(spec)] if isinstance(_at(spec, p), list | dict) and _at(spec, p)
    ]
    path = _pick(data, containers, "duplicate in")
    if path is None:
        return
    node = _at(spec, path)
    if isinstance(node, list):
        node.append(copy.deepcopy(data.draw(st.sampled_from(node), label="item")))
    else:
        key = data.draw(st.sampled_from(sorted(node)), label="entry")
        node[data.draw(identifiers, label="copy's key")] = copy.deepcopy(node[key])


@st.composite
def column_bodies(draw: st.DrawFn, kind: str | None = None) -> dict[str, Any]:
    """A column the spec accepts: the options its type needs and no others."""
    kind = kind or draw(column_types)
    body: dict[str, Any] = {"type": kind}
    if kind in ("string", "enum"):
        body["length"] = draw(st.integers(min_value=1, max_value=300))
    if kind == "enum":
        words = st.from_regex(r"[a-z]{1,8}", fullmatch=True)
        body["values"] = draw(st.lists(words, min_size=1, max_size=4, unique=True))
    if kind == "decimal":
        body["precision"] = draw(st.integers(min_value=1, max_value=20))
        body["scale"] = draw(st.integers(min_value=0, max_value=body["precision"]))
    if draw(st.booleans()):
        body["nullable"] = draw(st.booleans())
    if kind in ("integer", "bigint") and draw(st.booleans()):
        body["default"] = draw(st.integers(min_value=0, max_value=100))
    if kind in ("integer", "bigint", "decimal") and draw(st.booleans()):
        body["check"] = draw(st.sampled_from([">= 0", "> 0", "<= 1000"]))
    if kind != "json" and draw(st.integers(0, 4)) == 0:
        body["unique"] = True
    return body


def change_table(data: st.DataObject, spec: Any) -> None:
    """Drop, rename (with or without renamed_from), retype or resize a column, add a column
    or a table; maybe allow the table to lose data."""
    table_path = _pick(data, _tables(spec), "table")
    if table_path is None:
        return
    table = _at(spec, table_path)
    columns = table["columns"]
    plain = [name for name, body in columns.items() if not (body or {}).get("primary_key")]
    column = data.draw(st.sampled_from(sorted(plain or columns)), label="column")
    action = data.draw(
        st.sampled_from(
            ["drop", "rename", "rename_from", "retype", "resize", "add_column", "add_table"]
        ),
        label="table change",
    )
    body = columns[column] if isinstance(columns[column], dict) else {}
    if action == "drop":
        del columns[column]
    elif action in ("rename", "rename_from"):
        del columns[column]
        if action == "rename_from":
            body = {**body, "renamed_from": column}
        columns[data.draw(identifiers, label="new column")] = body
    elif action == "retype":
        columns[column] = data.draw(column_bodies(), label="new type")
    elif action == "resize":
        sized = dict(body)
        for option, low in (("length", 1), ("precision", 1), ("scale", 0)):
            if isinstance(sized.get(option), int):
                near = st.integers(
                    min_value=max(low, sized[option] - 5), max_value=sized[option] + 5
                )
                sized[option] = data.draw(near, label=option)
        if isinstance(sized.get("scale"), int) and isinstance(sized.get("precision"), int):
            sized["scale"] = min(sized["scale"], sized["precision"])
        columns[column] = sized
    elif action == "add_column":
        columns[data.draw(identifiers, label="added column")] = data.draw(column_bodies())
    elif action == "add_table":
        new_columns = data.draw(
            st.dictionaries(identifiers, column_bodies(), min_size=1, max_size=3), label="columns"
        )
        new_columns["id"] = {"type": "uuid", "primary_key": True}
        _at(spec, table_path[:-1])[data.draw(identifiers, label="new table")] = {
            "columns": new_columns
        }
    if data.draw(st.booleans(), label="allow_destructive"):
        table["allow_destructive"] = True


NASTY_TEXT = st.sampled_from(
    [
        '"""',
        "'''",
        "\\",
        "a\nb: c",
        "# x",
        "{{ x }}",
        "{% raw %}",
        "| a |",
        "`x`",
        "${X}",
        "\u2028",
        "\t",
        "é ✓",
    ]
)


def describe(data: st.DataObject, spec: Any) -> None:
    """A description (free text the generator copies into code, YAML and Markdown)."""
    owners: list[PathKey] = []
    for top in ("topics", "events", "services"):
        if isinstance(spec.get(top), dict):
            owners += [(top, name) for name, body in spec[top].items() if isinstance(body, dict)]
    owners += [
        (*path, "columns", column)
        for path in _tables(spec)
        for column in _at(spec, path)["columns"]
    ]
    owners += _tables(spec)
    path = _pick(data, owners, "described")
    if path and isinstance(_at(spec, path), dict):
        parts = data.draw(
            st.lists(NASTY_TEXT | st.text(max_size=5), min_size=1, max_size=3), label="text"
        )
        _at(spec, path)["description"] = "".join(parts)


SPEC_MUTATIONS = [delete_key, retype, rename_reference, duplicate_entry, change_table, describe]


def mutate_text(data: st.DataObject, text: str) -> str:
    """Edits of the file itself: truncate, insert text, repeat a line, random YAML."""
    action = data.draw(
        st.sampled_from(["truncate", "insert", "repeat", "yaml", "text"]), label="text"
    )
    if action == "truncate":
        return text[: data.draw(st.integers(0, len(text)), label="cut")]
    if action == "insert":
        at = data.draw(st.integers(0, len(text)), label="at")
        piece = data.draw(
            st.text(max_size=8)
            | st.sampled_from(["\t", ": ", "- ", "&a ", "*a", "{", "!!binary ", "\n  x: 1\n"]),
            label="piece",
        )
        return text[:at] + piece + text[at:]
    if action == "repeat":
        lines = text.splitlines(keepends=True) or [""]
        at = data.draw(st.integers(0, len(lines) - 1), label="line")
        return "".join([*lines[: at + 1], lines[at], *lines[at + 1 :]])
    if action == "yaml":
        return yaml.safe_dump(data.draw(values, label="random yaml"))
    return data.draw(st.text(max_size=60), label="random text")


# ----------------------------------------------------------------------------- revisions


def _revisions(out: Path) -> list[Path]:
    return sorted(out.glob("**/migrations/versions/*.py"))


def _own(out: Path, path: Path) -> None:
    with (out / MANIFEST).open("a", encoding="utf-8") as manifest:
        manifest.write(path.relative_to(out).as_posix() + "\n")


def corrupt_revisions(data: st.DataObject, out: Path) -> None:
    """Damage the existing history the way a bad merge or a stray edit would."""
    revisions = _revisions(out)
    victim: Path = data.draw(st.sampled_from(revisions), label="revision")
    action = data.draw(
        st.sampled_from(
            ["branch", "branch_unowned", "same_id", "garbage", "undecodable", "orphan", "empty"]
        ),
        label="corruption",
    )
    text = victim.read_text(encoding="utf-8")
    if action in ("branch", "branch_unowned", "same_id"):
        copied = victim.with_name("0001_copied_revision.py")
        if action != "same_id":
            text = re.sub(
                r'^revision: str = "\w+"', 'revision: str = "c0ffee000000"', text, flags=re.M
            )
        copied.write_text(text, encoding="utf-8")
        if action != "branch_unowned":
            _own(out, copied)
    elif action == "garbage":
        victim.write_text(data.draw(st.text(max_size=40), label="garbage"), encoding="utf-8")
    elif action == "undecodable":
        victim.write_bytes(b"\xff\xfe" + data.draw(st.binary(max_size=20), label="bytes"))
    elif action == "orphan":
        text = re.sub(
            r"^down_revision: .*$", 'down_revision: str | None = "0123456789ab"', text, flags=re.M
        )
        victim.write_text(text, encoding="utf-8")
    else:
        victim.write_text("", encoding="utf-8")


# ----------------------------------------------------------------------------- properties


def assert_clean_exit(result: Result, allowed: tuple[int, ...]) -> None:
    """No uncaught exception and no traceback; an exit code from `allowed`."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(
            f"uncaught {result.exception!r}\n{result.output}"
        ) from result.exception
    assert "Traceback" not in result.output, result.output
    assert result.exit_code in allowed, (result.exit_code, result.output)


def assert_located(result: Result, spec: Path, out: Path) -> None:
    """Every line of a refusal names where the problem is: FILE:LINE:COL of the spec, or the
    path of a generated file."""
    source = re.escape(source_name(spec))
    located = re.compile(rf"^{source}:\d+:\d+: \S")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, "a refusal says why"
    for line in lines:
        if SUMMARY.match(line) or located.match(line):
            continue
        assert str(out) in line, f"not located: {line!r}\n{result.stderr}"


def assert_history_kept(before: dict[str, bytes], root: Path) -> None:
    """Revisions only ever grow: each one there before is still there, byte for byte, and
    Alembic sees one line of history (a single head) in every versions folder."""
    after = _files(root)
    for path, content in before.items():
        if "/migrations/versions/" in path:
            assert after.get(path) == content, f"generate rewrote or removed {path}"
    for versions in sorted((root / "out").glob("**/migrations/versions")):
        heads = ScriptDirectory(str(versions.parent)).get_heads()
        assert len(heads) == 1, f"{versions}: Alembic sees heads {heads}"


def assert_output_parses(root: Path) -> None:
    """Every generated Python, YAML and JSON file is still valid in its language."""
    for path in sorted((root / "out").rglob("*")):
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".py":
            compile(text, str(path), "exec")
        elif path.suffix in (".yaml", ".yml"):
            list(yaml.safe_load_all(text))
        elif path.suffix == ".json":
            json.loads(text)


def check_project(root: Path) -> None:
    spec, out = root / "spec.yaml", root / "out"
    before = _files(root)
    validated = _validate(root)
    assert_clean_exit(validated, (0, 2))
    assert _files(root) == before, "validate wrote something"
    if validated.exit_code:
        assert_located(validated, spec, out)
    generated = _generate(root)
    assert_clean_exit(generated, (0, 2))
    event(f"validate {validated.exit_code}, generate {generated.exit_code}")
    if generated.exit_code:
        assert _files(root) == before, "a refused generate changed files"
        assert_located(generated, spec, out)
        assert validated.exit_code == 2, (
            f"validate accepted what generate refuses:\n{generated.stderr}"
        )
        return
    assert_history_kept(before, root)
    assert_output_parses(root)
    again = _generate(root, "--check")
    assert_clean_exit(again, (0,))


@contextlib.contextmanager
def project_copy(original: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fuzz-") as temp:
        root = Path(temp) / "project"
        shutil.copytree(original, root)
        yield root


def mutate_spec(data: st.DataObject, spec_file: Path) -> None:
    text = spec_file.read_text(encoding="utf-8")
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError:
        spec = None  # an invalid test spec that is not even YAML: edit its text
    if not isinstance(spec, dict) or data.draw(st.integers(0, 3), label="edit the text") == 0:
        spec_file.write_text(mutate_text(data, text), encoding="utf-8")
        return
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        data.draw(st.sampled_from(SPEC_MUTATIONS), label="mutation")(data, spec)
    spec_file.write_text(
        yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )


@settings(FUZZ, max_examples=EXAMPLES or 24)
@hunt
@given(data=st.data())
def test_mutated_specs_are_refused_cleanly(projects: dict[str, Path], data: st.DataObject) -> None:
    base = data.draw(
        st.sampled_from(["minimal", "minimal", "minimal", "platform", "invalid"]), label="base"
    )
    with project_copy(projects["minimal" if base == "invalid" else base]) as root:
        if base == "invalid":
            invalid = data.draw(st.sampled_from(INVALID), label="invalid spec")
            shutil.copyfile(invalid, root / "spec.yaml")
        mutate_spec(data, root / "spec.yaml")
        check_project(root)


@settings(FUZZ, max_examples=EXAMPLES or 14)
@hunt
@given(data=st.data())
def test_table_changes_are_planned_or_refused_cleanly(
    projects: dict[str, Path], data: st.DataObject
) -> None:
    """Changes to the tables alone mostly leave a valid spec: these reach the migration
    planner (a new revision, or a refusal located at the table or column)."""
    base = data.draw(st.sampled_from(["minimal", "minimal", "platform"]), label="base")
    with project_copy(projects[base]) as root:
        spec = yaml.safe_load((root / "spec.yaml").read_text(encoding="utf-8"))
        for _ in range(data.draw(st.integers(1, 3), label="changes")):
            change_table(data, spec)
        (root / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
        check_project(root)


@settings(FUZZ, max_examples=EXAMPLES or 10)
@hunt
@given(data=st.data())
def test_corrupted_revisions_are_refused_cleanly(
    projects: dict[str, Path], data: st.DataObject
) -> None:
    with project_copy(projects["minimal"]) as root:
        corrupt_revisions(data, root / "out")
        if data.draw(st.booleans(), label="and change the spec"):
            change_table(data, spec := yaml.safe_load((root / "spec.yaml").read_text()))
            (root / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        check_project(root)
