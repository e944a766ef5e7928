"""Route matching, compiled once: literal paths in a dict, parameterised ones in a segment trie.

A regex per route tried in turn costs a scan of the table per request; the trie costs one
dict lookup per path segment whatever the table's size. At each segment a literal beats a
parameter (`/api/events/stream` wins over `/api/events/{id}`), falling back to the
parameter only when the literal branch leads nowhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cloudretail.runtime.gateway.config import AuthRule, RouteSpec


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    template: str
    upstream: str
    auth: AuthRule
    roles: frozenset[str]

    @classmethod
    def from_spec(cls, spec: RouteSpec) -> Route:
        return cls(spec.method, spec.path, spec.upstream, spec.auth, frozenset(spec.roles))


# The routes of one path, by method.
MethodMap = Mapping[str, Route]


@dataclass
class _Node:
    literals: dict[str, _Node] = field(default_factory=dict)
    param: _Node | None = None
    methods: dict[str, Route] | None = None


def _is_param(segment: str) -> bool:
    return segment.startswith("{") and segment.endswith("}") and len(segment) > 2


def _bad_segment(segment: str) -> bool:
    # Dot segments would let `/api/products/../users` reach another service's route once an
    # upstream normalises the path; an empty one is `//` or a trailing slash.
    return segment in ("", ".", "..")


class RouteTable:
    def __init__(self, routes: Iterable[Route]) -> None:
        self._exact: dict[str, dict[str, Route]] = {}
        self._root = _Node()
        self.routes: tuple[Route, ...] = tuple(routes)
        for route in self.routes:
            segments = route.template.strip("/").split("/")
            if not any(_is_param(segment) for segment in segments):
                self._exact.setdefault(route.template, {})[route.method] = route
                continue
            node = self._root
            for segment in segments:
                if _is_param(segment):
                    node.param = node.param or _Node()
                    node = node.param
                else:
                    node = node.literals.setdefault(segment, _Node())
            if node.methods is None:
                node.methods = {}
            node.methods[route.method] = route

    def match(self, path: str) -> MethodMap | None:
        """The routes for `path` by method, or None when no route has this path."""
        exact = self._exact.get(path)
        if exact is not None:
            return exact
        if not path.startswith("/"):
            return None
        return _walk(self._root, path[1:].split("/"), 0)

    def paths(self) -> dict[str, dict[str, Route]]:
        """Every path template with its routes, for documents such as OpenAPI."""
        table: dict[str, dict[str, Route]] = {}
        for route in self.routes:
            table.setdefault(route.template, {})[route.method] = route
        return table


def _walk(node: _Node, segments: list[str], index: int) -> dict[str, Route] | None:
    if index == len(segments):
        return node.methods
    segment = segments[index]
    literal = node.literals.get(segment)
    if literal is not None:
        found = _walk(literal, segments, index + 1)
        if found is not None:
            return found
    if node.param is not None and not _bad_segment(segment):
        return _walk(node.param, segments, index + 1)
    return None
