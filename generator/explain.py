"""`cloudretail explain generated/FILE[:LINE]`: which part of the spec a generated file (and
one of its lines) comes from.

Three questions, answered from what the generator already knows, so that no target has to
record anything for it:

- which target made the file, and from which template: the targets are run again (they
  only list their files; nothing is rendered) and the one that lists the path is named;
- which spec keys the file derives from: the names in its path (a service, a deployable,
  a topic, a database) resolved to the spec's keys (`services/order/...`, `k8s/.../
  order-service/...` are `services.order`); a file no name points at derives from the whole
  spec (the architecture page, compose);
- for a line, the spec keys its words name: the deepest key under the file's own keys
  (else anywhere) whose name, or whose value, is a word of the line (`total_amount` ->
  `services.order.tables.orders.columns.total_amount`). Event names also match as Python
  writes them (`order.created` as `OrderCreated` and `on_order_created`).

A path no target lists (a handler module, a file of one's own) is refused: it does not
come from the spec.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cloudretail.generator.errors import Location, SpecError, SpecIssue
from cloudretail.generator.loader import Document, PathKey, dotted
from cloudretail.generator.model import Platform, pascal
from cloudretail.generator.validation import names_a_field

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:[.\-][A-Za-z0-9_]+)*|/[A-Za-z0-9_/{}.\-]+")
# The fields whose values name something of the spec (a handler, a route, a service ...):
# a line that shows such a value came from that key. Other values (`uuid`, `true`, `GET`)
# are too common to point anywhere.
_NAMING_FIELDS = frozenset(
    {
        "body",
        "call",
        "calls",
        "compensate",
        "consumes",
        "crud",
        "database",
        "erasure_event",
        "events",
        "handler",
        "jwks",
        "key",
        "name",
        "path",
        "prefix",
        "publishes",
        "saga",
        "subject",
        "subject_key",
        "subject_through",
        "upstream",
    }
)


@dataclass(frozen=True)
class SpecKey:
    path: PathKey
    location: Location

    @property
    def dotted(self) -> str:
        return dotted(self.path) or "(the whole spec)"


@dataclass(frozen=True)
class Explanation:
    file: str  # as given, inside the output folder
    target: str  # the generator module that lists it
    template: str | None  # None: the target computes its text (migration revisions)
    keys: tuple[SpecKey, ...]  # what the file derives from
    line: int | None = None
    line_text: str | None = None
    line_keys: tuple[SpecKey, ...] = ()

    def record(self) -> dict[str, Any]:
        def key(found: SpecKey) -> dict[str, Any]:
            where = found.location
            return {"path": dotted(found.path), "file": where.path, "line": where.line}

        result: dict[str, Any] = {
            "ok": True,
            "file": self.file,
            "target": self.target,
            "template": self.template,
            "from": [key(found) for found in self.keys],
        }
        if self.line is not None:
            result["line"] = {"number": self.line, "keys": [key(k) for k in self.line_keys]}
        return result

    def lines(self) -> list[str]:
        made = f"the `{self.target.rpartition('.')[2]}` target ({self.target})"
        made += f", template {self.template}" if self.template else ", text it computes"
        out = [self.file, f"  made by  {made}"]
        out += [f"  from     {key.dotted} ({key.location})" for key in self.keys]
        if self.line is not None:
            shown = (self.line_text or "").strip()
            out.append(f"  line {self.line}: {shown[:80]}")
            if self.line_keys:
                out += [f"    {key.dotted} ({key.location})" for key in self.line_keys]
            else:
                out.append("    no spec key named on this line; the file's keys above apply")
        return out


def _names(platform: Platform) -> dict[str, PathKey]:
    """Every name a generated path can carry, and the spec key it stands for."""
    names: dict[str, PathKey] = {}
    for topic in platform.topics:
        for name in (topic.name, f"{topic.name}-dlq", topic.dead_letter):
            names[name] = ("topics", topic.name)
    for service in platform.services:
        database = service.database
        for name in (
            database,
            database.replace("_", "-"),
            f"{database.replace('_', '-')}-postgres",
        ):
            names[name] = ("services", service.name, "database")
        deployable = service.deployable.name
        for name in (service.name, f"{service.name}-service", deployable, f"{deployable}-migrate"):
            names[name] = ("services", service.name)
    gateway = platform.gateway.deployable.name
    for name in ("gateway", gateway):
        names[name] = ("gateway",)
    bus = platform.event_bus.deployable.name
    bus_db = platform.event_bus.database.replace("_", "-")
    for name in ("eventbus", bus, f"{bus}-migrate"):
        names[name] = ("event_bus",)
    for name in (platform.event_bus.database, bus_db, f"{bus_db}-postgres"):
        names[name] = ("event_bus", "database")
    for name in ("loadtest", "artillery"):
        names[name] = ("load_test",)
    names["kafka"] = ("topics",)
    names["events"] = ("events",)
    return names


def _file_keys(relative: str, platform: Platform) -> list[PathKey]:
    """The spec keys the names in a generated file's path stand for (most specific last)."""
    names = _names(platform)
    found: list[PathKey] = []
    for part in PurePosixPath(relative).parts:
        stem = part.split(".")[0] if not part.startswith(".") else part
        key = names.get(part) or names.get(stem)
        if key is not None and key not in found:
            found.append(key)
    # `services/order/...` then `.../order-service/...`: keep the most specific of a line.
    specific = [key for key in found if not any(o != key and o[: len(key)] == key for o in found)]
    return specific or [()]


def _walk(data: Any, path: PathKey = ()) -> Iterator[tuple[PathKey, Any]]:
    yield path, data
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _walk(value, (*path, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _walk(value, (*path, index))


def _spellings(word: str) -> set[str]:
    """How a spec name appears in generated code: as written, and an event's class and
    handler names."""
    spelled = {word}
    if "." in word and not word.startswith("/"):
        spelled |= {pascal(word), "on_" + word.replace(".", "_"), word.replace(".", "_")}
    return spelled


def _naming_field(path: PathKey) -> bool:
    """Whether the value at `path` is one of a naming field (a list item counts as its
    list's)."""
    keys = [part for part in path if isinstance(part, str)]
    return (
        bool(keys)
        and keys[-1] in _NAMING_FIELDS
        and names_a_field(path[: path.index(keys[-1]) + 1])
    )


def _line_keys(document: Document, roots: list[PathKey], text: str) -> list[PathKey]:
    words = set(_WORD.findall(text))
    if not words:
        return []
    hits: list[tuple[PathKey, int]] = []  # a key, and how long the word it matched is
    for path, value in _walk(document.data):
        if not path:
            continue
        last = path[-1]
        matched = set()
        # A name the author chose (a column's), not a field every spec has (`nullable`).
        if isinstance(last, str) and not names_a_field(path):
            matched |= _spellings(last) & words
        if isinstance(value, str) and _naming_field(path):
            matched |= _spellings(value) & words
        if matched:
            hits.append((path, max(len(word) for word in matched)))
    inside = [hit for hit in hits if any(hit[0][: len(root)] == root for root in roots)]
    chosen = inside or hits
    if not chosen:
        return []
    deepest = max(len(path) for path, _ in chosen)
    top = [(path, size) for path, size in chosen if len(path) == deepest]
    # The deepest keys, the longest names first: `total_amount` is what a line about that
    # column is about, a column called `name` matching a `name=` beside it less so.
    longest = max(size for _, size in top)
    return [path for path, size in top if size * 2 > longest][:3]


def explain(
    document: Document,
    platform: Platform,
    out_dir: Path,
    relative: str,
    owners: dict[str, tuple[str, str | None]],
    line: int | None = None,
) -> Explanation:
    """Explain the generated file `relative` (inside `out_dir`) and maybe its `line`.
    `owners`: each generated path's target module and template (see `file_owners`)."""
    given = f"{out_dir.as_posix()}/{relative}"
    if relative not in owners:
        raise SpecError(
            [
                SpecIssue(
                    Location(given, 1, 1),
                    "",
                    "not a file the spec generates (it is not in the generator's file list; "
                    "`cloudretail generate --check` shows what would change)",
                )
            ]
        )
    target, template = owners[relative]
    roots = _file_keys(relative, platform)
    keys = tuple(SpecKey(root, document.locate(root, key=True)) for root in roots)
    if line is None:
        return Explanation(given, target, template, keys)
    try:
        lines = (out_dir / relative).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    if not 1 <= line <= len(lines):
        raise SpecError(
            [SpecIssue(Location(given, 1, 1), "", f"has {len(lines)} lines; no line {line}")]
        )
    text = lines[line - 1]
    header = line == 1 or (line == 2 and lines[0].startswith("#!"))
    found = [] if header and "cloudretail generate" in text else _line_keys(document, roots, text)
    line_keys = tuple(SpecKey(path, document.locate(path, key=True)) for path in found)
    return Explanation(given, target, template, keys, line, text, line_keys)


def file_owners(platform: Platform, existing: dict[str, str]) -> dict[str, tuple[str, str | None]]:
    """Each generated path and the target module (and template) that lists it."""
    from cloudretail.generator.targets import migrations
    from cloudretail.generator.targets.every import TARGETS

    owners: dict[str, tuple[str, str | None]] = {}
    for target in TARGETS:
        for file in target(platform):
            owners[file.path] = (target.__module__, file.template or None)
    for file in migrations.files(platform, existing):
        owners[file.path] = (migrations.__name__, file.template or None)
    return owners
