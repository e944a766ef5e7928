"""The generated Jenkinsfile: Groovy that parses, with the GitHub workflows' stages, and the
images, migrations, rollouts and Secrets that deployables.json lists, in its order.

The syntax check compiles the file to Groovy's syntax tree (Debian's `groovy`, 2.4 as
Jenkins' own CPS engine; no Jenkins needed); the structure is read with regular expressions.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from tests.deploy.conftest import GENERATED, K8S, tool

JENKINSFILE = GENERATED / "ci" / "Jenkinsfile"
PARSE = """
import org.codehaus.groovy.control.CompilationUnit
import org.codehaus.groovy.control.Phases
def unit = new CompilationUnit()
unit.addSource(new File(args[0]))
unit.compile(Phases.CONVERSION)
"""


def _groovy(script: Path, target: Path) -> subprocess.CompletedProcess[str]:
    groovy = tool("groovy", "apt-get install groovy")
    java = shutil.which("java")
    env = dict(os.environ)
    if java and "JAVA_HOME" not in env:  # Debian's launcher wants it
        env["JAVA_HOME"] = str(Path(java).resolve().parents[1])
    return subprocess.run(
        [groovy, str(script), str(target)], capture_output=True, text=True, env=env, timeout=120
    )


def test_the_jenkinsfile_is_groovy_that_parses(tmp_path: Path) -> None:
    script = tmp_path / "parse.groovy"
    script.write_text(PARSE)
    parsed = _groovy(script, JENKINSFILE)
    assert parsed.returncode == 0, parsed.stderr
    broken = tmp_path / "Jenkinsfile"
    broken.write_text(JENKINSFILE.read_text().replace("sh 'make test'", "sh 'make test"))
    refused = _groovy(script, broken)
    assert refused.returncode != 0 and "expecting" in refused.stderr


def test_the_stages_are_the_workflows_and_the_lists_are_deployables_json() -> None:
    text = JENKINSFILE.read_text()
    lists = json.loads((K8S / "deployables.json").read_text())
    images = [image["name"] for image in lists["images"]]
    stages = re.findall(r"stage\('([^']+)'\)", text)
    assert stages == [
        "Test",
        "Generated is fresh",
        "Manifests",
        "Images",
        *images,
        "Deploy",
        "Push images",
        "Pin every image to this commit",
        "Rollout",
    ]
    assert re.search(r"stage\('Deploy'\) \{\s+when \{\s+branch 'main'", text)
    for image in lists["images"]:
        assert f"docker build -f {image['dockerfile']} -t {image['image']}:" in text
        assert f"docker push {image['image']}:" in text
        assert f"kustomize edit set image {image['image']}=" in text
    for overlay in lists["overlays"]:
        assert f"kubectl kustomize generated/k8s/overlays/{overlay} " in text

    def order(pattern: str) -> list[str]:
        return re.findall(pattern, text)

    assert order(r"externalsecret\.external-secrets\.io/(\S+) ") == lists["external_secrets"]
    assert order(r"get secret (\S+) ") == lists["secrets"]
    assert order(r"cluster\.postgresql\.cnpg\.io/(\S+) ") == lists["databases"]
    assert order(r"wait job/(\S+) ") == lists["migrations"]
    assert order(r"rollout status deployment/(\S+) ") == lists["deployments"]
    phases = [text.index(p) for p in ("phase=infrastructure", "phase=migrate'", "rollout status")]
    assert phases == sorted(phases)
