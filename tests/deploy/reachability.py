"""Who may open a connection to whom, computed from NetworkPolicy manifests alone.

A small evaluator of Kubernetes NetworkPolicy semantics (networking.k8s.io/v1): a pod that
no policy selects for a direction is unrestricted in that direction; a selected pod allows
what the union of its policies' rules allows. A connection needs the source's egress and
the destination's ingress. Policies only restrict pods of the namespaces they live in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Manifest = dict[str, Any]
Edge = tuple[str, str, int, str]  # source, destination, port, protocol


@dataclass(frozen=True)
class Endpoint:
    """A workload's pods (or an address outside the cluster when `namespace` is None)."""

    id: str
    namespace: str | None
    labels: Mapping[str, str] = field(default_factory=dict)
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    address: str = "10.0.0.1"  # pods get a pod address; outsiders their own
    ports: tuple[tuple[int, str], ...] = ()  # what it listens on (for reporting only)

    @property
    def is_pod(self) -> bool:
        return self.namespace is not None


def pod(id: str, namespace: str, labels: Mapping[str, str]) -> Endpoint:
    return Endpoint(
        id, namespace, dict(labels), {"kubernetes.io/metadata.name": namespace}, "10.244.0.10"
    )


def outside(id: str, address: str) -> Endpoint:
    return Endpoint(id, None, {}, {}, address)


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Label selector semantics; an empty selector selects everything."""
    if selector is None:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def _peer_matches(peer: Mapping[str, Any], policy_namespace: str, endpoint: Endpoint) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        if endpoint.is_pod:
            # ipBlock is meant for addresses outside the cluster; pod addresses are
            # implementation-defined, so a test of isolation must not rely on them.
            return False
        address = ipaddress.ip_address(endpoint.address)
        network = ipaddress.ip_network(block["cidr"])
        if address.version != network.version or address not in network:
            return False
        return not any(address in ipaddress.ip_network(cidr) for cidr in block.get("except", []))
    if not endpoint.is_pod:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], endpoint.namespace_labels):
            return False
    elif endpoint.namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector"), endpoint.labels)


def _port_matches(ports: list[Mapping[str, Any]] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        number = entry.get("port")
        if number is None:
            return True
        assert isinstance(number, int), f"named port {number!r}: the generator writes numbers"
        if number == port or number <= port <= entry.get("endPort", number):
            return True
    return False


def _rules_allow(
    rules: list[Mapping[str, Any]],
    peers_key: str,
    policy_namespace: str,
    other: Endpoint,
    port: int,
    protocol: str,
) -> bool:
    for rule in rules:
        peers = rule.get(peers_key)
        if peers and not any(_peer_matches(p, policy_namespace, other) for p in peers):
            continue
        if _port_matches(rule.get("ports"), port, protocol):
            return True
    return False


def _policy_types(policy: Manifest) -> list[str]:
    spec = policy["spec"]
    if "policyTypes" in spec:
        return list(spec["policyTypes"])
    return ["Ingress", *(["Egress"] if "egress" in spec else [])]


@dataclass
class Policies:
    items: list[Manifest]

    def _applying(self, endpoint: Endpoint, direction: str) -> list[Manifest]:
        return [
            policy
            for policy in self.items
            if endpoint.namespace == policy["metadata"]["namespace"]
            and direction in _policy_types(policy)
            and selects(policy["spec"].get("podSelector") or {}, endpoint.labels)
        ]

    def allows(self, source: Endpoint, target: Endpoint, port: int, protocol: str) -> bool:
        if source.is_pod:
            egress = self._applying(source, "Egress")
            if egress and not any(
                _rules_allow(
                    p["spec"].get("egress") or [],
                    "to",
                    p["metadata"]["namespace"],
                    target,
                    port,
                    protocol,
                )
                for p in egress
            ):
                return False
        if target.is_pod:
            ingress = self._applying(target, "Ingress")
            if ingress and not any(
                _rules_allow(
                    p["spec"].get("ingress") or [],
                    "from",
                    p["metadata"]["namespace"],
                    source,
                    port,
                    protocol,
                )
                for p in ingress
            ):
                return False
        return True

    def ports(self) -> set[tuple[int, str]]:
        """Every (port, protocol) any rule names."""
        found = set()
        for policy in self.items:
            for direction in ("ingress", "egress"):
                for rule in policy["spec"].get(direction) or []:
                    for entry in rule.get("ports") or []:
                        found.add((entry["port"], entry.get("protocol", "TCP")))
        return found


def reachable(
    policies: Iterable[Manifest],
    endpoints: Iterable[Endpoint],
    namespaces: set[str],
    extra_ports: Iterable[tuple[int, str]] = (),
) -> set[Edge]:
    """Every (source, destination, port, protocol) the policies allow, for every pair where
    at least one end is in `namespaces` (elsewhere these policies say nothing)."""
    evaluator = Policies(list(policies))
    everything = list(endpoints)
    ports = evaluator.ports() | set(extra_ports)
    allowed: set[Edge] = set()
    for source in everything:
        for target in everything:
            if source.namespace not in namespaces and target.namespace not in namespaces:
                continue
            for port, protocol in sorted(ports):
                if evaluator.allows(source, target, port, protocol):
                    allowed.add((source.id, target.id, port, protocol))
    return allowed
