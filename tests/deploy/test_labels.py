"""Kubernetes' recommended labels on every object of every overlay as kustomize builds it,
operators' custom resources included, and never in a selector.

https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudretail.generator import load_platform
from cloudretail.generator.model import Platform

from tests.deploy.conftest import K8S, OVERLAYS, ROOT, Manifest, load_documents

NAME = "app.kubernetes.io/name"
INSTANCE = "app.kubernetes.io/instance"
VERSION = "app.kubernetes.io/version"
COMPONENT = "app.kubernetes.io/component"
PART_OF = "app.kubernetes.io/part-of"
MANAGED_BY = "app.kubernetes.io/managed-by"
RECOMMENDED = (NAME, INSTANCE, VERSION, COMPONENT, PART_OF, MANAGED_BY)
# What differs between overlays or releases: a selector holding one of them would stop
# matching its pods when the object moves to another version or overlay (and a Deployment's
# selector cannot be changed at all).
NEVER_SELECTED = (INSTANCE, VERSION, MANAGED_BY)
SELECTOR_KEYS = {"selector", "podSelector", "namespaceSelector", "labelSelector"}
# A label value: at most 63 characters, alphanumerics with -_. inside.
LABEL_VALUE = re.compile(r"(?=.{1,63}$)[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


@pytest.fixture(scope="module")
def platform() -> Platform:
    return load_platform(ROOT / "spec" / "cloudretail.yaml")


@pytest.fixture(scope="module")
def builds(kustomize_builds: dict[str, Path]) -> dict[str, list[Manifest]]:
    """Every overlay deployables.json lists (the ones the workflows build), built."""
    listed = json.loads((K8S / "deployables.json").read_text())["overlays"]
    assert sorted(listed) == sorted(OVERLAYS), "tests/deploy/conftest.py OVERLAYS is stale"
    return {name: load_documents(kustomize_builds[name].read_text()) for name in listed}


def _where(overlay: str, doc: Manifest) -> str:
    return f"overlays/{overlay}: {doc['kind']} {doc['metadata']['name']}"


def _selectors(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every label selector in an object, wherever its kind keeps one (spec.selector,
    podSelector and namespaceSelector of NetworkPolicy peers, topology spread, ...)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in SELECTOR_KEYS and isinstance(value, dict):
                yield f"{path}.{key}", value
            else:
                yield from _selectors(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _selectors(item, f"{path}[{index}]")


def _overlay_tag(docs: list[Manifest], platform: Platform) -> str:
    """The one tag the overlay gives the platform's images."""
    tags: set[str] = {
        container["image"].rsplit(":", 1)[1]
        for doc in docs
        if doc["kind"] in {"Deployment", "Job"}
        for container in doc["spec"]["template"]["spec"]["containers"]
        if container["image"].startswith(f"{platform.registry}/")
    }
    assert len(tags) == 1, tags
    return tags.pop()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_carries_the_recommended_labels(
    overlay: str, builds: dict[str, list[Manifest]], platform: Platform
) -> None:
    docs = builds[overlay]
    version = _overlay_tag(docs, platform)
    kinds = {doc["kind"] for doc in docs}
    # The operators' custom resources are objects too.
    assert {"Kafka", "KafkaTopic", "Cluster", "Certificate", "NetworkPolicy"} <= kinds, kinds
    problems = []
    for doc in docs:
        labels = doc["metadata"].get("labels") or {}
        where = _where(overlay, doc)
        missing = [key for key in RECOMMENDED if key not in labels]
        if missing:
            problems.append(f"{where}: no {', '.join(missing)}")
            continue
        problems += [
            f"{where}: {key}={labels[key]!r} is not a label value"
            for key in RECOMMENDED
            if not LABEL_VALUE.fullmatch(str(labels[key]))
        ]
        expected = {
            PART_OF: platform.name,
            INSTANCE: f"{platform.name}-{overlay}",
            MANAGED_BY: "cloudretail",
            # The images' tag (what runs), not the tool's release: output stays the same
            # for every CloudRetail version that renders the same spec.
            VERSION: version,
        }
        problems += [
            f"{where}: {key}={labels[key]!r}, expected {value!r}"
            for key, value in expected.items()
            if labels[key] != value
        ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_deployables_objects_are_named_after_it(
    overlay: str, builds: dict[str, list[Manifest]], platform: Platform
) -> None:
    names = {deployable.name for deployable in platform.deployables}
    for doc in builds[overlay]:
        if doc["metadata"]["name"] in names:
            assert doc["metadata"]["labels"][NAME] == doc["metadata"]["name"], _where(overlay, doc)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_selector_holds_what_changes_between_versions_or_overlays(
    overlay: str, builds: dict[str, list[Manifest]]
) -> None:
    found = 0
    problems = []
    for doc in builds[overlay]:
        for path, selector in _selectors(doc.get("spec") or {}, "spec"):
            found += 1
            text = json.dumps(selector)
            problems += [
                f"{_where(overlay, doc)}: {path} selects on {key}"
                for key in NEVER_SELECTED
                if f'"{key}"' in text
            ]
    assert not problems, "\n".join(problems)
    assert found > 50  # the walk did reach the Deployments, PDBs, Services and policies


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_carry_the_instance_but_not_the_version(
    overlay: str, builds: dict[str, list[Manifest]]
) -> None:
    """A pod says which instance it belongs to; the version stays on the objects, so a new
    version restarts no pod whose image is unchanged (Redis), and each Deployment's selector
    still matches its pods."""
    templates = 0
    for doc in builds[overlay]:
        if doc["kind"] not in {"Deployment", "Job"}:
            continue
        templates += 1
        where = _where(overlay, doc)
        labels = doc["spec"]["template"]["metadata"]["labels"]
        for key in (NAME, INSTANCE, MANAGED_BY, COMPONENT, PART_OF):
            assert labels.get(key) == doc["metadata"]["labels"][key], f"{where}: pod {key}"
        assert VERSION not in labels, f"{where}: the pod template carries {VERSION}"
        selector = (doc["spec"].get("selector") or {}).get("matchLabels") or {}
        assert selector.items() <= labels.items(), f"{where}: {selector} does not match {labels}"
    assert templates > 10
