"""The custom resources target the APIs current operators serve, and the strict validation
that tests/deploy/test_manifests.py runs on them rejects what the API server would."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cloudretail.generator.targets import k8s_data

from tests.deploy import crd
from tests.deploy.conftest import ROOT, Manifest, by_kind

# Where the workspace keeps the operators' published schemas, when it is there.
REFERENCE = ROOT.parent / "shared" / "crds"
# Strimzi 1.2.0's kafka-versions.yaml: the Kafka versions it runs and their metadata versions.
STRIMZI_KAFKA = {"4.2.0": "4.2-IV1", "4.2.1": "4.2-IV1", "4.3.0": "4.3-IV0", "4.3.1": "4.3-IV0"}


def _first(manifests: dict[str, Manifest], kind: str) -> Manifest:
    return copy.deepcopy(next(iter(by_kind(manifests, kind).values())))


def _listener_typo(doc: Manifest) -> None:
    doc["spec"]["kafka"]["listeners"][0]["tlss"] = False


def _volume_typo(doc: Manifest) -> None:
    doc["spec"]["storage"]["volumes"][0]["sizee"] = "1Gi"


def _topic_type(doc: Manifest) -> None:
    doc["spec"]["partitions"] = "three"


def _cluster_typo(doc: Manifest) -> None:
    doc["spec"]["instancez"] = 3


def _pool_mode(doc: Manifest) -> None:
    doc["spec"]["pgbouncer"]["poolMode"] = "statement"  # PgBouncer has it; CloudNativePG not


def _pooler_typo(doc: Manifest) -> None:
    doc["spec"]["pgbouncer"]["poolmode"] = doc["spec"]["pgbouncer"].pop("poolMode")


def _parameter_type(doc: Manifest) -> None:
    doc["spec"]["pgbouncer"]["parameters"]["default_pool_size"] = 20  # strings only


def _cluster_parameter_type(doc: Manifest) -> None:
    doc["spec"]["postgresql"]["parameters"]["max_connections"] = 100


def _metadata_typo(doc: Manifest) -> None:
    doc["metadata"]["label"] = {"a": "b"}


def _certificate_typo(doc: Manifest) -> None:
    doc["spec"]["dnsName"] = doc["spec"].pop("dnsNames")


def _issuer_unnamed(doc: Manifest) -> None:
    del doc["spec"]["issuerRef"]["name"]


def _key_algorithm(doc: Manifest) -> None:
    doc["spec"]["privateKey"]["algorithm"] = "DSA"


@pytest.mark.parametrize(
    ("kind", "change", "named"),
    [
        ("Kafka", _listener_typo, "tlss"),
        ("KafkaNodePool", _volume_typo, "sizee"),
        ("KafkaTopic", _topic_type, "spec.partitions"),
        ("Cluster", _cluster_typo, "instancez"),
        ("Cluster", _metadata_typo, "label"),
        ("Cluster", _cluster_parameter_type, "max_connections"),
        ("Pooler", _pool_mode, "statement"),
        ("Pooler", _pooler_typo, "poolmode"),
        ("Pooler", _parameter_type, "default_pool_size"),
        ("Certificate", _certificate_typo, "dnsName"),
        ("Certificate", _issuer_unnamed, "name"),
        ("Certificate", _key_algorithm, "DSA"),
    ],
)
def test_the_strict_validation_rejects_what_the_server_would(
    manifests: dict[str, Manifest], kind: str, change: Any, named: str
) -> None:
    document = _first(manifests, kind)
    assert crd.problems(document) == []
    change(document)
    found = crd.problems(document)
    assert found and any(named in problem for problem in found), found


def test_a_retired_api_has_no_schema(manifests: dict[str, Manifest]) -> None:
    """Strimzi 1.0 removed kafka.strimzi.io/v1beta2: an object of it is refused, not passed."""
    document = _first(manifests, "Kafka")
    document["apiVersion"] = "kafka.strimzi.io/v1beta2"
    assert crd.problems(document) == [
        "no schema for kafka.strimzi.io/v1beta2 Kafka in crd_schemas/"
    ]


def test_kafka_is_a_version_the_pinned_strimzi_runs(manifests: dict[str, Manifest]) -> None:
    kafka = _first(manifests, "Kafka")["spec"]["kafka"]
    assert k8s_data.STRIMZI_VERSION == "1.2.0"  # the release STRIMZI_KAFKA was read from
    assert STRIMZI_KAFKA.get(kafka["version"]) == kafka["metadataVersion"]


def _kept() -> list[Path]:
    return sorted(path for path in crd.SCHEMAS.rglob("*.json"))


@pytest.mark.parametrize("path", _kept(), ids=lambda path: path.relative_to(crd.SCHEMAS).as_posix())
def test_the_kept_schemas_are_the_published_ones(path: Path) -> None:
    if not REFERENCE.is_dir():
        pytest.skip(f"no reference set at {REFERENCE} to compare the kept copies with")
    relative = path.relative_to(crd.SCHEMAS).as_posix()
    index = json.loads((REFERENCE / "index.json").read_text())
    entry = next((item for item in index["schemas"] if item["file"] == relative), None)
    if entry is None:
        # Its source is named in crd_schemas/README.md (test_every_kept_schema_names_its_source).
        pytest.skip(f"the reference set at {REFERENCE} does not hold {relative}")
    assert entry["served"] and not entry["deprecated"], f"{relative}: not a current API"
    assert path.read_bytes() == (REFERENCE / relative).read_bytes()


@pytest.mark.parametrize("path", _kept(), ids=lambda path: path.relative_to(crd.SCHEMAS).as_posix())
def test_every_kept_schema_names_its_source(path: Path) -> None:
    """Each copy's README row names the repository and release tag it was taken from."""
    relative = path.relative_to(crd.SCHEMAS).as_posix()
    rows = [
        line
        for line in (crd.SCHEMAS / "README.md").read_text().splitlines()
        if line.startswith(f"| `{relative}` |")
    ]
    assert len(rows) == 1, f"{relative}: no row in crd_schemas/README.md"
    source = rows[0].split("|")[2]
    assert "same" in source or re.search(r"[\w-]+/[\w-]+ `v?\d+\.\d+\.\d+`", source), rows[0]


def test_each_database_has_its_pooler_as_the_spec_sizes_it(manifests: dict[str, Manifest]) -> None:
    """spec/cloudretail.yaml puts every database behind PgBouncer in transaction mode: one
    Pooler per Cluster, pointing at it, sized by `defaults.database.pooler`, and the Cluster's
    server certificate names the Pooler's Service (the services verify it, verify-full)."""
    clusters = by_kind(manifests, "Cluster")
    poolers = by_kind(manifests, "Pooler")
    assert {pooler["spec"]["cluster"]["name"] for pooler in poolers.values()} == set(clusters)
    for name, pooler in poolers.items():
        assert crd.problems(pooler) == []
        spec = pooler["spec"]
        assert name not in clusters  # CloudNativePG: a Pooler may not share a Cluster's name
        assert (spec["type"], spec["pgbouncer"]["poolMode"], spec["instances"]) == (
            "rw",
            "transaction",
            2,
        )
        assert spec["pgbouncer"]["parameters"] == {
            "default_pool_size": "20",
            "max_client_conn": "1000",
        }
        cluster = clusters[spec["cluster"]["name"]]["spec"]
        assert cluster["postgresql"]["parameters"] == {"max_connections": "100"}
        assert name in cluster["certificates"]["serverAltDNSNames"]
