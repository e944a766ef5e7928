"""The platform's architecture as a graph (`cloudretail graph`): services, the gateway, the
event bus, topics and databases as nodes; routes, calls, published and consumed events and
storage as edges. The same model data `docs/architecture.md` draws from; the templates in
templates/graph/ print it as Mermaid or Graphviz DOT, and Graphviz's `dot` lays DOT out as
SVG (there is no maintained pure-Python layout engine to do it instead).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass

from cloudretail.generator.errors import EnvironmentProblem
from cloudretail.generator.model import Platform
from cloudretail.generator.render import environment

FORMATS = ("mermaid", "dot", "svg")

# How each kind of node is drawn: Mermaid's brackets around the label, DOT's shape.
_MERMAID = {
    "gateway": ('(["', '"])'),
    "event-bus": ('(["', '"])'),
    "service": ('["', '"]'),
    "topic": ('[/"', '"/]'),
    "database": ('[("', '")]'),
}
_DOT = {
    "gateway": "hexagon",
    "event-bus": "hexagon",
    "service": "box",
    "topic": "parallelogram",
    "database": "cylinder",
}
# Edges: solid for requests and storage, dashed for events, dotted for service calls.
_MERMAID_ARROW = {"route": "-->", "call": "-.->", "event": "==>", "store": "---"}
_DOT_STYLE = {"route": "solid", "call": "dotted", "event": "dashed", "store": "solid"}


def _quoted(text: str) -> str:
    """A label inside double quotes: a `"` in it (from a description) becomes `'`."""
    return text.replace('"', "'")


@dataclass(frozen=True)
class Node:
    id: str
    label: str
    kind: str

    @property
    def mermaid(self) -> str:
        opening, closing = _MERMAID[self.kind]
        return f"{self.id}{opening}{_quoted(self.label)}{closing}"

    @property
    def dot(self) -> str:
        label = json.dumps(self.label, ensure_ascii=False)
        return f'"{self.id}" [label={label}, shape={_DOT[self.kind]}]'


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    label: str
    kind: str  # route | call | event | store

    @property
    def mermaid(self) -> str:
        arrow = _MERMAID_ARROW[self.kind]
        label = f'|"{_quoted(self.label)}"|' if self.label else ""
        return f"{self.source} {arrow}{label} {self.target}"

    @property
    def dot(self) -> str:
        label = json.dumps(self.label, ensure_ascii=False)
        return f'"{self.source}" -> "{self.target}" [label={label}, style={_DOT_STYLE[self.kind]}]'


@dataclass(frozen=True)
class Graph:
    name: str
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]


def architecture(platform: Platform) -> Graph:
    """Every deployable, topic and database of the platform, and what connects them."""
    gateway = platform.gateway.deployable
    bus = platform.event_bus.deployable
    nodes = [Node(gateway.node_id, f"{gateway.title} :{gateway.port}", "gateway")]
    edges: list[Edge] = []
    for service in platform.services:
        node = service.deployable.node_id
        nodes.append(Node(node, f"{service.title} :{service.port}", "service"))
        if service.tables:
            nodes.append(Node(f"{node}DB", service.database, "database"))
            edges.append(Edge(node, f"{node}DB", "", "store"))
    nodes.append(Node(bus.node_id, f"{bus.title} :{bus.port}", "event-bus"))
    nodes.append(Node(f"{bus.node_id}DB", platform.event_bus.database, "database"))
    edges.append(Edge(bus.node_id, f"{bus.node_id}DB", "", "store"))
    nodes += [Node(topic.node_id, topic.name, "topic") for topic in platform.topics]
    for upstream in platform.gateway.upstreams:
        target = bus.node_id if upstream.name == "event_bus" else None
        if target is None:
            target = platform.service(upstream.name).deployable.node_id
        edges.append(Edge(gateway.node_id, target, f"{upstream.prefix}/*", "route"))
    for caller, callee in platform.call_edges:
        source = platform.service(caller).deployable.node_id
        edges.append(Edge(source, platform.service(callee).deployable.node_id, "calls", "call"))
    for flow in platform.publish_flows:
        edges.append(Edge(flow.service_node, flow.topic_node, ", ".join(flow.events), "event"))
    for flow in platform.consume_flows:
        edges.append(Edge(flow.topic_node, flow.service_node, ", ".join(flow.events), "event"))
    edges += [Edge(topic.node_id, bus.node_id, "", "event") for topic in platform.topics]
    return Graph(platform.name, tuple(nodes), tuple(edges))


def draw(platform: Platform, form: str) -> str:
    """The architecture as Mermaid, DOT or SVG text. SVG needs Graphviz's `dot` on PATH:
    without it, an EnvironmentProblem that says so."""
    graph = architecture(platform)
    template = (
        "graph/architecture.dot.j2" if form in ("dot", "svg") else "graph/architecture.mmd.j2"
    )
    text = environment().get_template(template).render(graph=graph)
    if form != "svg":
        return text
    dot = shutil.which("dot")
    if dot is None:
        raise EnvironmentProblem(
            "--format svg needs Graphviz's `dot` on PATH (e.g. `apt install graphviz`, "
            "`brew install graphviz`); --format mermaid and --format dot need nothing"
        )
    done = subprocess.run(
        [dot, "-Tsvg"], input=text, capture_output=True, text=True, check=False, timeout=60
    )
    if done.returncode != 0:
        raise EnvironmentProblem(f"`dot -Tsvg` failed: {done.stderr.strip()}")
    return done.stdout
