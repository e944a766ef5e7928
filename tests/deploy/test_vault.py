"""`platform.secrets.vault`: the prod overlay's Secrets come from Vault through the External
Secrets Operator (a SecretStore with Kubernetes auth and an ExternalSecret per Secret the
manifests reference, CloudNativePG's own excepted); the dev overlay, and a spec without
Vault, keep plain Secrets. Strict schema validation of the objects is test_manifests.py."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from cloudretail.generator import load_platform, render

from tests.deploy import crd
from tests.deploy.conftest import K8S, ROOT, by_kind, load_documents

MINIMAL = ROOT / "tests" / "specs" / "minimal.yaml"


def _vault_documents() -> dict[str, dict]:
    found = {}
    for path in sorted((K8S / "vault").rglob("*.yaml")):
        if path.name != "kustomization.yaml":
            (doc,) = load_documents(path.read_text())
            found[path.relative_to(K8S).as_posix()] = doc
    return found


def test_every_secret_the_deployments_reference_comes_from_vault_in_prod() -> None:
    lists = json.loads((K8S / "deployables.json").read_text())
    documents = _vault_documents()
    externals = by_kind(documents, "ExternalSecret")
    assert sorted(externals) == sorted(lists["secrets"]) == sorted(lists["external_secrets"])
    (store,) = by_kind(documents, "SecretStore").values()
    vault = store["spec"]["provider"]["vault"]
    platform = load_platform(ROOT / "spec" / "cloudretail.yaml")
    assert platform.vault is not None
    assert vault["server"] == platform.vault.server and vault["version"] == "v2"
    account = vault["auth"]["kubernetes"]["serviceAccountRef"]["name"]
    assert account in by_kind(documents, "ServiceAccount")
    for name, external in externals.items():
        assert external["spec"]["secretStoreRef"] == {
            "name": store["metadata"]["name"],
            "kind": "SecretStore",
        }
        assert external["spec"]["target"]["name"] == name
        remotes = {item["remoteRef"]["key"] for item in external["spec"]["data"]}
        assert remotes == {f"{platform.vault.prefix}/{name}"}
        assert crd.problems(external) == []
    tls = [e for e in externals.values() if "template" in e["spec"]["target"]]
    assert [e["spec"]["target"]["template"]["type"] for e in tls] == ["kubernetes.io/tls"]
    assert crd.problems(store) == []
    prod = (K8S / "overlays" / "prod" / "kustomization.yaml").read_text()
    dev = (K8S / "overlays" / "dev" / "kustomization.yaml").read_text()
    assert "../../vault" in prod and "../../vault" not in dev


def test_the_key_names_match_what_the_deployments_read() -> None:
    """Each ExternalSecret fills the keys that the Deployments' secretKeyRefs ask for."""
    wanted: dict[str, set[str]] = {}
    for path in (K8S / "base" / "apps").rglob("deployment.yaml"):
        (doc,) = load_documents(path.read_text())
        for container in doc["spec"]["template"]["spec"]["containers"]:
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    wanted.setdefault(ref["name"], set()).add(ref["key"])
    externals = by_kind(_vault_documents(), "ExternalSecret")
    for name, keys in wanted.items():
        if name in externals:
            assert keys <= {item["secretKey"] for item in externals[name]["spec"]["data"]}


def test_a_spec_without_vault_keeps_plain_secrets(tmp_path: Path) -> None:
    spec = yaml.safe_load(MINIMAL.read_text())
    assert "secrets" not in spec["platform"]
    files = render(load_platform(MINIMAL))
    assert not [path for path in files if path.startswith("k8s/vault/")]
    assert "../../vault" not in files["k8s/overlays/prod/kustomization.yaml"]
    assert json.loads(files["k8s/deployables.json"])["external_secrets"] == []
