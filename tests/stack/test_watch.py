"""`cloudretail up --watch` on a copy of examples/library (the smaller platform: four
services): a handler edit restarts that service only, a spec edit regenerates, migrates
and restarts only what it changed, an invalid spec keeps the running stack and prints what
`cloudretail validate` prints. Which processes restarted is read from their PIDs in the
stack's state file; what changed is checked through the gateway.

One stack for the module, edited by the tests in turn (ports 3101-3104, 4100, 8180, the
embedded broker on 9092): run it under `flock /tmp/cloudretail-stack.lock`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "library"
SPEC = "spec/library.yaml"
BIN = Path(sys.executable).parent
GATEWAY = "http://127.0.0.1:8180"
ADMIN = ("admin@library.example", "admin-of-the-stacks-2026")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
PROCESSES = {"members", "catalog", "loans", "fees", "eventbus", "gateway"}


@dataclass
class Watching:
    folder: Path
    data_dir: Path
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(ANSI.sub("", line.rstrip("\n")))

    def wait_for(self, pattern: str, since: int, timeout: float = 60) -> str:
        """The first output line from `since` on that matches `pattern`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            for line in self.lines[since:]:
                if re.search(pattern, line):
                    return line
            time.sleep(0.2)
        tail = "\n".join(self.lines[since:][-60:])
        raise AssertionError(f"no line matching {pattern!r} in the output:\n{tail}")

    def output(self, since: int) -> str:
        return "\n".join(self.lines[since:])

    def pids(self) -> dict[str, int]:
        state = json.loads((self.data_dir / "state.json").read_text())
        return {name: info["pid"] for name, info in state["processes"].items()}

    def edit(self, path: str, old: str, new: str) -> None:
        file = self.folder / path
        text = file.read_text()
        assert text.count(old) == 1, old
        file.write_text(text.replace(old, new))


def cloudretail(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "cloudretail"), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def watching(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watching]:
    folder = tmp_path_factory.mktemp("watch") / "library"
    shutil.copytree(
        EXAMPLE, folder, ignore=shutil.ignore_patterns("generated", ".cloudretail", "__pycache__")
    )
    made = cloudretail("generate", "--spec", SPEC, cwd=folder)
    assert made.returncode == 0, made.stdout + made.stderr
    data_dir = folder / ".cloudretail"
    command = ["up", "--spec", SPEC, "--watch", "--reset", "--data-dir", str(data_dir)]
    process = subprocess.Popen(
        [str(BIN / "cloudretail"), *command],
        cwd=folder,
        env={
            **os.environ,
            "CLOUDRETAIL_ADMIN_EMAIL": ADMIN[0],
            "CLOUDRETAIL_ADMIN_PASSWORD": ADMIN[1],
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    watching = Watching(folder, data_dir, process)
    reader = threading.Thread(target=watching.pump, daemon=True)
    reader.start()
    try:
        watching.wait_for(r"\| watch: following spec/library\.yaml and handlers/", 0, 150)
        yield watching
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            cloudretail("down", "--data-dir", str(data_dir), cwd=folder)  # what it left
        reader.join(timeout=5)


def client() -> httpx.Client:
    return httpx.Client(base_url=GATEWAY, timeout=30.0)


def login(email: str, password: str) -> dict[str, str]:
    with client() as http:
        answer = http.post("/api/members/login", json={"email": email, "password": password})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def restarted(before: dict[str, int], after: dict[str, int]) -> set[str]:
    assert set(before) == set(after) == PROCESSES
    assert all(after.values()), after  # every process runs
    return {name for name in PROCESSES if before[name] != after[name]}


def test_a_handler_change_restarts_that_service_only(watching: Watching) -> None:
    handler = "handlers/fees.py"
    original = (watching.folder / handler).read_text()
    before = watching.pids()

    # A service that fails to start after the edit is shown; the rest of the stack serves on.
    mark = len(watching.lines)
    (watching.folder / handler).write_text(original + "\nraise RuntimeError('broken here')\n")
    line = watching.wait_for(r"\| watch: (restarted|.*did not start)", mark)
    assert "fees did not start" in line, watching.output(mark)
    assert "watch: restarting fees" in watching.output(mark)
    assert "RuntimeError: broken here" in watching.output(mark)
    state = json.loads((watching.data_dir / "state.json").read_text())
    assert state["failed"] == ["fees"], state
    others = {name: pid for name, pid in watching.pids().items() if name != "fees"}
    assert others == {name: pid for name, pid in before.items() if name != "fees"}
    with client() as http:
        assert http.get("/api/catalog/titles").status_code == 200

    # Fixed, with a new fine limit: the fees service runs it; nothing else restarted.
    mark = len(watching.lines)
    (watching.folder / handler).write_text(
        original.replace('FINE_LIMIT = Decimal("5.00")', 'FINE_LIMIT = Decimal("7.50")')
    )
    line = watching.wait_for(r"\| watch: (restarted|.*did not start)", mark)
    assert line.endswith("watch: restarted fees"), watching.output(mark)
    assert restarted(before, watching.pids()) == {"fees"}
    email = f"reader-{uuid.uuid4().hex[:8]}@library.example"
    with client() as http:
        made = http.post(
            "/api/members/register",
            json={"email": email, "password": "correct horse battery", "name": "Reader"},
        )
        assert made.status_code == 201, made.text
        member = login(email, "correct horse battery")
        mine = http.get("/api/fees/mine", headers=member)
    assert mine.status_code == 200, mine.text
    assert mine.json()["fine_limit"] == "7.50"


def test_a_spec_change_regenerates_migrates_and_restarts_that_service(watching: Watching) -> None:
    before = watching.pids()
    mark = len(watching.lines)
    watching.edit(
        SPEC,
        '          year: {type: integer, check: ">= 0"}\n',
        '          year: {type: integer, check: ">= 0"}\n'
        "          edition: {type: string, length: 40}\n",
    )
    line = watching.wait_for(r"\| watch: (restarted|.*kept|.*did not start)", mark)
    output = watching.output(mark)
    assert line.endswith("watch: restarted catalog"), output
    # The diff summary `generate` prints, then the new revision applied to that database.
    assert re.search(r"added\s+generated/services/catalog/migrations/versions/0002_", output)
    assert re.search(r"changed\s+generated/services/catalog/models\.py", output), output
    assert re.search(r"\d+ added, \d+ changed, 0 removed, \d+ unchanged", output), output
    assert "migrated catalog to " in output and "migrated loans" not in output, output
    assert restarted(before, watching.pids()) == {"catalog"}

    admin = login(*ADMIN)
    title = {
        "isbn": f"978-{uuid.uuid4().int % 10**10:010d}",
        "title": "Walden",
        "author": "Thoreau",
        "edition": "2nd",
    }
    with client() as http:
        added = http.post("/api/catalog/titles", json=title, headers=admin)
        assert added.status_code == 201, added.text
        read = http.get(f"/api/catalog/titles/{added.json()['id']}")
    assert read.status_code == 200 and read.json()["edition"] == "2nd", read.text


def test_an_invalid_spec_keeps_the_stack_and_its_fix_applies(watching: Watching) -> None:
    before = watching.pids()
    spec = watching.folder / SPEC
    valid = spec.read_text()
    mark = len(watching.lines)
    watching.edit(
        SPEC, 'year: {type: integer, check: ">= 0"}', 'year: {type: integr, check: ">= 0"}'
    )
    line = watching.wait_for(r"\| watch: (restarted|.*kept|.*did not start)", mark)
    output = watching.output(mark)
    assert line.endswith("watch: the running stack is kept; fix the spec and save"), output
    # What `cloudretail validate` says about the same file, line by line, with its location.
    validated = cloudretail("validate", SPEC, cwd=watching.folder)
    assert validated.returncode == 2 and validated.stdout == "", validated.stdout
    problems = validated.stderr.splitlines()
    assert problems and re.match(r"spec/library\.yaml:\d+:\d+: .*integr", problems[0]), problems
    for problem in problems:
        assert f"| {problem}" in output, output
    assert watching.pids() == before
    admin = login(*ADMIN)
    with client() as http:
        titles = http.get("/api/catalog/titles")
        assert titles.status_code == 200 and titles.json()["total"] >= 1, titles.text
        made = http.post(
            "/api/catalog/titles",
            json={
                "isbn": f"978-{uuid.uuid4().int % 10**10:010d}",
                "title": "Emma",
                "author": "Austen",
            },
            headers=admin,
        )
        assert made.status_code == 201, made.text
        copy = http.post(
            f"/api/catalog/titles/{made.json()['id']}/copies",
            json={"barcode": f"EMM-{uuid.uuid4().hex[:8]}", "shelf": "A-1"},
            headers=admin,
        )
        assert copy.status_code == 201, copy.text
        copy_id = copy.json()["id"]
        # No such route yet: the gateway knows the path for GET only.
        assert http.delete(f"/api/catalog/copies/{copy_id}", headers=admin).status_code == 405

    # Fixed, and with a new route: the catalog serves it, the gateway routes it.
    mark = len(watching.lines)
    spec.write_text(
        valid.replace(
            '      - {method: GET, path: "/api/catalog/copies/{id}", auth: public, crud: copies.get, name: get_copy}\n',
            '      - {method: GET, path: "/api/catalog/copies/{id}", auth: public, crud: copies.get, name: get_copy}\n'
            '      - {method: DELETE, path: "/api/catalog/copies/{id}", auth: admin, crud: copies.delete}\n',
        )
    )
    assert spec.read_text() != valid
    line = watching.wait_for(r"\| watch: (restarted|.*kept|.*did not start)", mark)
    assert line.endswith("watch: restarted catalog, gateway"), watching.output(mark)
    assert "migrat" not in watching.output(mark)  # no table changed: no database touched
    assert restarted(before, watching.pids()) == {"catalog", "gateway"}
    with client() as http:
        deleted = http.delete(f"/api/catalog/copies/{copy_id}", headers=admin)
        assert deleted.status_code == 204, deleted.text
        assert http.get(f"/api/catalog/copies/{copy_id}").status_code == 404
