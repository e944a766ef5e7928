"""Load a spec's YAML and keep the line and column of every node, for errors that point."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cloudretail.generator.errors import Location, SpecError, SpecIssue, UnreadableSpecError

PathKey = tuple[str | int, ...]

# Aliases let a small file stand for a huge document (each level repeating the one before);
# a spec is a few thousand values, so far more than that is refused instead of expanded.
MAX_VALUES = 100_000

# libyaml's parser is ~10x faster than the pure-Python one and keeps the same marks.
SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class Document:
    """The plain data of a YAML file plus where each value and each key stands in it."""

    source: str
    data: Any
    values: dict[PathKey, Location] = field(default_factory=dict)
    keys: dict[PathKey, Location] = field(default_factory=dict)

    def locate(self, path: PathKey, *, key: bool = False) -> Location:
        """Location of the deepest known node on `path` (its key when `key` is set)."""
        if key and path in self.keys:
            return self.keys[path]
        for end in range(len(path), -1, -1):
            prefix = path[:end]
            if prefix in self.values:
                return self.values[prefix]
        return Location(self.source, 1, 1)


def dotted(path: PathKey) -> str:
    """`('services', 'order', 'events', 'consumes', 1)` -> `services.order.events.consumes[1]`."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _location(source: str, mark: yaml.Mark) -> Location:
    return Location(source, mark.line + 1, mark.column + 1)


class _TooLarge(Exception):
    pass


class _Unreadable(Exception):
    """A scalar YAML cannot construct (already reported as an issue)."""


class _Builder:
    def __init__(self, source: str, loader: yaml.SafeLoader) -> None:
        self.source = source
        self.loader = loader
        self.document = Document(source=source, data=None)
        self.issues: list[SpecIssue] = []
        self.open: set[int] = set()  # the nodes being built: an alias to one is a cycle

    def build(self, node: yaml.Node, path: PathKey) -> Any:
        if id(node) in self.open:
            self._issue(node, path, "a recursive alias: refers back to a node that contains it")
            return None
        if len(self.document.values) >= MAX_VALUES:
            raise _TooLarge
        self.document.values[path] = _location(self.source, node.start_mark)
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            self.open.add(id(node))
            try:
                return self._build_collection(node, path)
            finally:
                self.open.discard(id(node))
        try:
            return self._construct(node, path)
        except _Unreadable:
            return None

    def _construct(self, node: yaml.Node, path: PathKey) -> Any:
        """The value of a scalar; one YAML cannot make (an impossible date such as 2001-13-01,
        or a value that does not fit its explicit tag) is an issue at the node."""
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as error:
            kind = str(node.tag).rpartition(":")[2] or "value"
            article = "an" if kind[:1] in "aeiou" else "a"
            message = f"cannot read {node.value!r} as {article} {kind}"
            detail = str(error)
            if isinstance(error, ValueError) and repr(node.value) not in detail:
                message += f": {detail}"
            self._issue(node, path, message)
            raise _Unreadable from None

    def _build_collection(self, node: yaml.Node, path: PathKey) -> Any:
        if isinstance(node, yaml.MappingNode):
            self.loader.flatten_mapping(node)  # resolves `<<` merge keys
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                try:
                    key = self._construct(key_node, path)
                except _Unreadable:
                    continue
                if not isinstance(key, str | int | bool | float) and key is not None:
                    self._issue(key_node, path, "a mapping key must be a plain scalar")
                    continue
                key = str(key) if not isinstance(key, str) else key
                if key in result:
                    self._issue(key_node, (*path, key), f"duplicate key '{key}'")
                    continue
                self.document.keys[(*path, key)] = _location(self.source, key_node.start_mark)
                result[key] = self.build(value_node, (*path, key))
            return result
        return [self.build(item, (*path, index)) for index, item in enumerate(node.value)]

    def _issue(self, node: yaml.Node, path: PathKey, message: str) -> None:
        self.issues.append(
            SpecIssue(_location(self.source, node.start_mark), dotted(path), message)
        )


def _reader_issue(text: str, source: str, error: yaml.reader.ReaderError) -> SpecIssue:
    """A character YAML does not accept, located by its position in the text."""
    before = text[: error.position]
    where = Location(source, before.count("\n") + 1, len(before.rpartition("\n")[2]) + 1)
    character = error.character  # the pure-Python reader gives a str, libyaml's an int
    code = ord(character) if isinstance(character, str) and len(character) == 1 else character
    if isinstance(code, int):
        problem = f"unacceptable character #x{code:04x}: {error.reason}"
    else:
        problem = str(error.reason)
    return SpecIssue(where, "", f"malformed YAML: {problem}")


def load_text(text: str, source: str) -> Document:
    """Parse YAML text; raise SpecError (with line and column) when it is malformed."""
    try:
        loader = SafeLoader(text)
    except yaml.reader.ReaderError as error:  # the pure-Python reader checks text up front
        raise SpecError([_reader_issue(text, source, error)]) from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError([SpecIssue(Location(source, 1, 1), "", "the spec is empty")])
        builder = _Builder(source, loader)
        data = builder.build(node, ())
    except _TooLarge:
        problem = f"the document has more than {MAX_VALUES} values (aliases that repeat aliases?)"
        raise SpecError([SpecIssue(Location(source, 1, 1), "", problem)]) from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = _location(source, mark) if mark else Location(source, 1, 1)
        problem = error.problem or error.context or "malformed YAML"
        raise SpecError([SpecIssue(where, "", f"malformed YAML: {problem}")]) from None
    except yaml.reader.ReaderError as error:
        raise SpecError([_reader_issue(text, source, error)]) from None
    except yaml.YAMLError as error:  # any other kind carries no position
        raise SpecError(
            [SpecIssue(Location(source, 1, 1), "", f"malformed YAML: {error}")]
        ) from None
    finally:
        loader.dispose()
    if builder.issues:
        raise SpecError(builder.issues)
    builder.document.data = data
    return builder.document


def load_file(path: Path, source: str | None = None) -> Document:
    """Read and parse a spec file; a missing or unreadable file is a SpecError too."""
    name = source or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UnreadableSpecError([SpecIssue(Location(name, 1, 1), "", "file not found")]) from None
    except IsADirectoryError:
        issue = SpecIssue(Location(name, 1, 1), "", "cannot read: a folder, not a file")
        raise UnreadableSpecError([issue]) from None
    except OSError as error:
        issue = SpecIssue(Location(name, 1, 1), "", f"cannot read: {error.strerror or error}")
        raise UnreadableSpecError([issue]) from None
    except UnicodeDecodeError as error:
        raise SpecError([SpecIssue(Location(name, 1, 1), "", f"cannot read: {error}")]) from None
    return load_text(text, name)
