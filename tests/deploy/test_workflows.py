"""The GitHub workflows (.github/workflows, hand-written): what a platform team checks before
trusting them with production.

- deploy.yml runs only after ci passed for that very commit (workflow_run), and deploys that
  commit; its deploy job has an environment (whose required reviewers are a repository
  setting); only the job that signs may ask for an OIDC token;
- every action is pinned by commit, every installed tool by version;
- the prod overlay is deployed with every image pinned by digest: the step that pins them is
  run here, on fake digests, with kubectl's kustomize.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import K8S, ROOT, load_documents, missing_tool, tool

WORKFLOWS = ROOT / ".github" / "workflows"
HEAD_SHA = "0123456789abcdef0123456789abcdef01234567"
SUCCESS = "github.event.workflow_run.conclusion == 'success'"
PUSH = "github.event.workflow_run.event == 'push'"
# owner/repo[/path]@<commit>, the release it is in the trailing comment.
PINNED = re.compile(r"[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}")
RELEASE_COMMENT = re.compile(r"uses: \S+\s+# v\d+(\.\d+)*$")
# `if:` functions that run a job even when a job it needs was skipped or failed.
INSTALL = re.compile(r"(?:^|[\s;&|(])(?:\S*/)?(pip3?|pipx|npm)\s+install\b([^;&|#\n]*)")
STATUS_OVERRIDES = re.compile(r"\b(always|failure|cancelled)\(\)")
Workflow = dict[str, Any]


def _load(name: str) -> Workflow:
    workflow = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as true.
    if True in workflow:
        workflow["on"] = workflow.pop(True)
    return dict(workflow)


@pytest.fixture(scope="module")
def workflows() -> dict[str, Workflow]:
    return {name: _load(name) for name in ("ci.yml", "deploy.yml")}


def _steps(workflow: Workflow) -> list[tuple[str, dict[str, Any]]]:
    return [
        (job_name, step)
        for job_name, job in workflow["jobs"].items()
        for step in job.get("steps", [])
    ]


# -- pinned --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ci.yml", "deploy.yml"])
def test_every_action_is_pinned_by_commit(name: str, workflows: dict[str, Workflow]) -> None:
    workflow = workflows[name]
    used = [(job, step["uses"]) for job, step in _steps(workflow) if "uses" in step]
    used += [(job, spec["uses"]) for job, spec in workflow["jobs"].items() if "uses" in spec]
    assert used
    problems = [
        f"{name}: job {job}: {uses} is not owner/repo@<40-hex commit>"
        for job, uses in used
        if not uses.startswith("./") and not PINNED.fullmatch(uses)
    ]
    # The release each commit is, for the reader and for update tools.
    problems += [
        f"{name}: {line.strip()!r} has no `# vX.Y.Z` comment"
        for line in (WORKFLOWS / name).read_text().splitlines()
        if re.match(r"\s*(- )?uses: ", line) and not RELEASE_COMMENT.search(line)
    ]
    assert not problems, "\n".join(problems)


def _installs(script: str) -> list[tuple[str, list[str]]]:
    """(installer, its arguments) for every pip/pipx/npm install of a script (`python -m pip`
    and `uv pip` included), up to the end of its command."""
    return [
        (f"{match[1]} install", [word.strip("'\"") for word in match[2].split()])
        for match in INSTALL.finditer(script.replace("\\\n", " "))
    ]


def _package_arguments(arguments: list[str]) -> list[str]:
    """The packages of an install command: its arguments that are not options (nor an
    option's value)."""
    packages = []
    skip = False
    for argument in arguments:
        if skip:
            skip = False
        elif argument.startswith("-"):
            skip = argument in {"-r", "--requirement", "-c", "--constraint", "--prefix"}
        else:
            packages.append(argument)
    return packages


@pytest.mark.parametrize("name", ["ci.yml", "deploy.yml"])
def test_every_installed_tool_names_its_version(name: str, workflows: dict[str, Workflow]) -> None:
    problems = []
    for job, step in _steps(workflows[name]):
        for installer, arguments in _installs(step.get("run", "")):
            packages = _package_arguments(arguments)
            if not packages and not {"-r", "--requirement"} & set(arguments):
                problems.append(f"{name}: job {job}: `{installer}` without a package")
            problems += [
                f"{name}: job {job}: `{installer} {package}` has no exact version"
                for package in packages
                if not re.search(r"(==|@)\d", package)
            ]
    assert not problems, "\n".join(problems)


def test_the_install_checker_sees_unpinned_installs() -> None:
    """The check above reads shell the way the workflows write it."""
    script = (
        "sudo apt-get update -q\n"
        "python -m pip install --quiet kubernetes-validate && pipx install checkov==3.3.30\n"
        ".venv/bin/pip install -U \\\n  pip ruff==0.6.0  # a comment\n"
    )
    found = {
        (installer, tuple(_package_arguments(arguments)))
        for installer, arguments in _installs(script)
    }
    assert found == {
        ("pip install", ("kubernetes-validate",)),
        ("pipx install", ("checkov==3.3.30",)),
        ("pip install", ("pip", "ruff==0.6.0")),
    }


def test_ci_installs_from_the_lock(workflows: dict[str, Workflow]) -> None:
    """The Python tools come from uv.lock (`make setup`) and the Makefile (`make tools`), and
    the dependency cache is keyed on what decides the downloads."""
    ci = workflows["ci.yml"]
    for job_name in ("test", "manifests"):
        steps = ci["jobs"][job_name]["steps"]
        runs = "\n".join(step.get("run", "") for step in steps)
        assert "make setup tools" in runs, job_name
        assert ".venv/bin/pip" not in runs, f"{job_name}: .venv is made by uv and has no pip"
        caches = [step for step in steps if str(step.get("uses", "")).startswith("actions/cache@")]
        assert caches, f"{job_name}: no dependency cache"
        for cache in caches:
            assert "~/.cache/uv" in cache["with"]["path"], job_name
            assert "hashFiles('uv.lock'" in cache["with"]["key"], job_name
        for step in steps:
            if str(step.get("uses", "")).startswith("actions/setup-python@"):
                assert "pyproject.toml" not in json.dumps(step.get("with", {})), job_name


# -- deploy only what CI passed ---------------------------------------------------------------


def test_deploy_runs_only_on_ci_completing_for_main(workflows: dict[str, Workflow]) -> None:
    deploy = workflows["deploy.yml"]
    assert deploy["on"] == {
        "workflow_run": {
            "workflows": [workflows["ci.yml"]["name"]],
            "types": ["completed"],
            "branches": ["main"],
        }
    }
    assert workflows["ci.yml"]["name"] == "ci"


def _guarded(jobs: dict[str, Any], name: str) -> bool:
    """Whether a job runs only when ci succeeded for a push: it says so itself, or it needs
    (without overriding the needs' status) a job that does."""
    job = jobs[name]
    condition = str(job.get("if", ""))
    if SUCCESS in condition and PUSH in condition:
        return True
    if STATUS_OVERRIDES.search(condition):
        return False
    needs = job.get("needs", [])
    needs = [needs] if isinstance(needs, str) else needs
    return any(_guarded(jobs, need) for need in needs)


def test_every_deploy_job_waits_for_ci_success(workflows: dict[str, Workflow]) -> None:
    jobs = workflows["deploy.yml"]["jobs"]
    assert not [name for name in jobs if not _guarded(jobs, name)]


def test_the_success_check_is_not_fooled() -> None:
    jobs: dict[str, Any] = {
        "plan": {"if": f"{SUCCESS} && {PUSH}"},
        "images": {"needs": "plan"},
        "deploy": {"needs": ["images"], "if": "always()"},
        "other": {"if": SUCCESS},
    }
    assert [name for name in jobs if _guarded(jobs, name)] == ["plan", "images"]


def test_deploy_builds_and_deploys_the_commit_ci_passed(workflows: dict[str, Workflow]) -> None:
    text = (WORKFLOWS / "deploy.yml").read_text()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"github\.sha|GITHUB_SHA", body)
    deploy = workflows["deploy.yml"]
    assert deploy["env"]["HEAD_SHA"] == "${{ github.event.workflow_run.head_sha }}"
    checkouts = [
        step
        for _, step in _steps(deploy)
        if str(step.get("uses", "")).startswith("actions/checkout@")
    ]
    assert len(checkouts) == len(deploy["jobs"])
    for step in checkouts:
        assert step["with"]["ref"] == "${{ github.event.workflow_run.head_sha }}"
    for _, step in _steps(deploy):
        if str(step.get("uses", "")).startswith("docker/build-push-action@"):
            tags = step["with"]["tags"].splitlines()
            assert "${{ matrix.image.image }}:${{ env.HEAD_SHA }}" in tags


def test_production_is_an_environment_and_only_the_signer_gets_a_token(
    workflows: dict[str, Workflow],
) -> None:
    deploy = workflows["deploy.yml"]
    jobs = deploy["jobs"]
    assert jobs["deploy"]["environment"] == "production"
    # Whatever reads the cluster's credentials is behind the environment's reviewers.
    for name, job in jobs.items():
        if "secrets.KUBECONFIG" in json.dumps(job):
            assert job.get("environment") == "production", name
    assert deploy["permissions"] == {"contents": "read"}
    signers = {
        name
        for name, job in jobs.items()
        for step in job.get("steps", [])
        if re.search(r"\bcosign sign\b", step.get("run", ""))
    }
    assert signers == {"images"}
    for name, job in jobs.items():
        wants_token = (job.get("permissions") or {}).get("id-token") == "write"
        assert wants_token == (name in signers), name
    assert "id-token" not in json.dumps(workflows["ci.yml"].get("permissions", {}))
    header = (WORKFLOWS / "deploy.yml").read_text().split("\nname:", 1)[0]
    assert "Required reviewers" in header and "`main`" in header


def test_images_are_signed_and_recorded_by_the_digest_they_were_pushed_as(
    workflows: dict[str, Workflow],
) -> None:
    steps = workflows["deploy.yml"]["jobs"]["images"]["steps"]
    build = next(s for s in steps if str(s.get("uses", "")).startswith("docker/build-push-action@"))
    sign = next(s for s in steps if "cosign sign" in s.get("run", ""))
    assert build["with"]["push"] is True
    assert sign["env"]["DIGEST"] == "${{ steps." + build["id"] + ".outputs.digest }}"
    assert re.search(r'cosign sign --yes "\$IMAGE@\$DIGEST"', sign["run"])
    upload = next(s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact@"))
    download = next(
        s
        for s in workflows["deploy.yml"]["jobs"]["deploy"]["steps"]
        if str(s.get("uses", "")).startswith("actions/download-artifact@")
    )
    assert upload["with"]["name"].startswith("digest-")
    assert download["with"]["pattern"] == "digest-*" and download["with"]["merge-multiple"]


# -- the prod overlay by digest ---------------------------------------------------------------


def _pin_step(workflows: dict[str, Workflow]) -> str:
    (script,) = [
        step["run"]
        for step in workflows["deploy.yml"]["jobs"]["deploy"]["steps"]
        if step.get("name", "").startswith("Pin every image")
    ]
    assert "kustomize edit" not in script and "newTag" not in script
    return str(script)


def _run_pin_step(
    script: str, workspace: Path, digests: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """The deploy job's pin step, as the runner runs it (bash -eo pipefail), in a workspace
    holding generated/k8s and the digests the images jobs would have recorded."""
    kubectl = tool("kubectl", "https://kubernetes.io/docs/tasks/tools/")
    jq = shutil.which("jq")
    if jq is None:
        missing_tool("jq is not installed (apt-get install jq)")
    assert jq is not None
    shutil.copytree(K8S, workspace / "generated" / "k8s")
    (workspace / "digests").mkdir()
    for name, (image, digest) in enumerate(digests.items()):
        record = {"name": f"image{name}", "image": image, "digest": digest}
        (workspace / "digests" / f"image{name}.json").write_text(json.dumps(record))
    runner = workspace / "runner"
    runner.mkdir()
    env = {
        "PATH": os.pathsep.join(
            dict.fromkeys([str(Path(kubectl).parent), str(Path(jq).parent), "/usr/bin", "/bin"])
        ),
        "HOME": str(workspace),
        "GITHUB_WORKSPACE": str(workspace),
        "RUNNER_TEMP": str(runner),
        "ROLLOUT": "generated/k8s/deployables.json",
        "OVERLAY": "generated/k8s/overlays/prod",
        "HEAD_SHA": HEAD_SHA,
    }
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _digests() -> dict[str, str]:
    images = [
        image["image"] for image in json.loads((K8S / "deployables.json").read_text())["images"]
    ]
    return {image: "sha256:" + f"{index:02x}" * 32 for index, image in enumerate(images)}


def test_the_deploy_pins_every_image_by_digest(
    workflows: dict[str, Workflow], tmp_path: Path
) -> None:
    digests = _digests()
    result = _run_pin_step(_pin_step(workflows), tmp_path, digests)
    assert result.returncode == 0, result.stdout + result.stderr
    docs = load_documents((tmp_path / "runner" / "prod.yaml").read_text())
    containers = [
        container["image"]
        for doc in docs
        if doc["kind"] in {"Deployment", "Job"}
        for container in doc["spec"]["template"]["spec"]["containers"]
    ]
    ours = [image for image in containers if image.split("@")[0].split(":")[0] in digests]
    assert len(ours) >= len(digests)
    for image in ours:
        name, _, digest = image.partition("@")
        assert digests.get(name) == digest, image
    # The version that runs is the commit, on every object (and on no pod template).
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/version"] == HEAD_SHA, doc["metadata"]


def test_the_deploy_stops_without_a_digest_for_every_image(
    workflows: dict[str, Workflow], tmp_path: Path
) -> None:
    digests = _digests()
    digests.pop(next(iter(digests)))
    result = _run_pin_step(_pin_step(workflows), tmp_path, digests)
    assert result.returncode != 0
    assert "deployables.json lists" in result.stderr
    assert not (tmp_path / "runner" / "prod.yaml").exists()


def test_the_deploy_stops_on_a_malformed_digest(
    workflows: dict[str, Workflow], tmp_path: Path
) -> None:
    digests = _digests()
    digests[next(iter(digests))] = "sha256:main"
    result = _run_pin_step(_pin_step(workflows), tmp_path, digests)
    assert result.returncode != 0 and "a digest is not sha256" in result.stderr


def test_the_deploy_refuses_an_image_its_overlay_left_at_a_tag(
    workflows: dict[str, Workflow], tmp_path: Path
) -> None:
    """The step's last check: should the overlay it writes not pin an image, the rendered
    manifests still name the tag, and the deploy stops."""
    script = _pin_step(workflows)
    pinning = "images: map({name: .image, digest: .digest}),"
    assert pinning in script
    result = _run_pin_step(script.replace(pinning, "images: [],"), tmp_path, _digests())
    assert result.returncode != 0
    assert "containers are pinned by digest" in result.stdout
