"""examples/library: a lending library, a second domain generated and run by CloudRetail.

Everything runs on a temporary copy of the example (the repository is never written to),
with the `cloudretail` command as a user runs it, from the copy's folder: validate,
generate, lint the output, migrate every database, then `up --detach` and requests through
the gateway (ports 3101-3104, 4100, 8180; the embedded broker on 9092), and `down`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import eventually

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "library"
SPEC = "spec/library.yaml"
# Each service's tables besides `alembic_version` and `outbox`: its spec tables, the
# consumers' `processed_events`, the saga's state.
SERVICES = {
    "members": {"members"},
    "catalog": {"titles", "copies", "processed_events"},
    "loans": {"loans", "saga_instances"},
    "fees": {"fees", "processed_events"},
}
BIN = Path(sys.executable).parent
GATEWAY = "http://127.0.0.1:8180"
ADMIN = ("admin@library.example", "admin-of-the-stacks-2026")
PASSWORD = "correct horse battery"

# Names of the shop's domain (spec/cloudretail.yaml). Whole words, or the identifiers, paths
# and topics made of them: "order" alone is also plain English and the generated code's
# sort order (`crud.order`, "in order"); "user" alone is a container's `user:` and `user_id`
# the envelope's acting principal, both the platform's own vocabulary, not the shop's.
SHOP_NAMES = re.compile(
    r"\b(products?|inventory|inventories|payments?|customers?|vendors?|shop|shoppers?|carts?|"
    r"skus?|orders|users)\b|\border[._-]|/orders?\b|\buser[.-]|/users?\b",
    re.IGNORECASE,
)


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def cloudretail(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return run(str(BIN / "cloudretail"), *args, cwd=cwd, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the example, validated and generated with the `cloudretail` command."""
    folder = tmp_path_factory.mktemp("example") / "library"
    shutil.copytree(
        EXAMPLE, folder, ignore=shutil.ignore_patterns("generated", ".cloudretail", "__pycache__")
    )
    valid = cloudretail("validate", SPEC, cwd=folder)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    assert "4: members:3101, catalog:3102, loans:3103, fees:3104" in valid.stdout
    made = cloudretail("generate", "--spec", SPEC, cwd=folder)
    assert made.returncode == 0, made.stdout + made.stderr
    assert "stub" not in made.stdout  # every handler the spec names is written
    for module in (EXAMPLE / "handlers").glob("*.py"):
        assert (folder / "handlers" / module.name).read_text() == module.read_text()
    return folder


def test_generated_code_is_lint_clean_and_speaks_of_the_library(project: Path):
    code = [str(project / "generated"), str(project / "handlers")]
    config = str(ROOT / "pyproject.toml")
    # From the checkout, so `runtime` resolves; the copy's own `generated` and `handlers`
    # come first for the files named here.
    checks = [
        (str(BIN / "ruff"), "check", "--no-cache", "--config", config, *code),
        (str(BIN / "ruff"), "format", "--no-cache", "--check", "--config", config, *code),
        (str(BIN / "mypy"), "--config-file", config, "--cache-dir", str(project / ".mypy"), *code),
    ]
    running = [
        subprocess.Popen(c, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for c in checks
    ]
    for command, process in zip(checks, running, strict=True):
        output, _ = process.communicate(timeout=240)
        assert process.returncode == 0, f"{' '.join(command[:2])}:\n{output}"
    found = [
        f"{path.relative_to(project)}:{number}: {line.strip()}"
        for path in sorted((project / "generated").rglob("*"))
        if path.is_file()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        # 402's reason phrase (RFC 9110) in the OpenAPI documents is HTTP's, not the shop's.
        if SHOP_NAMES.search(line.replace("Payment Required", "")) or "cloudretail_" in line
    ]
    assert not found, "\n".join(found)
    routes = (project / "generated" / "gateway" / "routes.yaml").read_text()
    assert "/internal/" not in routes  # service routes are never routed


def test_every_database_migrates_on_sqlite(project: Path, tmp_path: Path):
    for name, own in SERVICES.items():
        database = tmp_path / f"{name}.db"
        url = f"sqlite+aiosqlite:///{database}"
        done = run(
            sys.executable, "-m", f"generated.services.{name}", "migrate",
            cwd=project, env={"DATABASE_URL": url},
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert set(_tables(database)) == {"alembic_version", "outbox", *own}, name
    # The `cloudretail` command migrates the project of its working folder too.
    template = f"sqlite+aiosqlite:///{tmp_path}/cli-{{database}}.db"
    done = cloudretail("migrate", "--spec", SPEC, "--database-url-template", template, cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert {"loans", "alembic_version"} <= set(_tables(tmp_path / "cli-library_loans.db"))


def _tables(database: Path) -> list[str]:
    rows = sqlite3.connect(database).execute("SELECT name FROM sqlite_master WHERE type='table'")
    return [row[0] for row in rows]


# -- the running platform ----------------------------------------------------------------------


@dataclass
class Library:
    client: httpx.Client

    def login(self, email: str, password: str) -> dict[str, str]:
        answer = self.client.post("/api/members/login", json={"email": email, "password": password})
        assert answer.status_code == 200, answer.text
        return {"Authorization": f"Bearer {answer.json()['access_token']}"}

    def member(self) -> tuple[str, dict[str, str]]:
        email = f"reader-{uuid.uuid4().hex[:8]}@library.example"
        made = self.client.post(
            "/api/members/register", json={"email": email, "password": PASSWORD, "name": "Reader"}
        )
        assert made.status_code == 201, made.text
        return made.json()["id"], self.login(email, PASSWORD)

    def copy(self, copy_id: str) -> dict[str, Any]:
        answer = self.client.get(f"/api/catalog/copies/{copy_id}")
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body


@pytest.fixture(scope="module")
def library(project: Path) -> Iterator[tuple[Library, str]]:
    data_dir = project / ".cloudretail"
    env = {"CLOUDRETAIL_ADMIN_EMAIL": ADMIN[0], "CLOUDRETAIL_ADMIN_PASSWORD": ADMIN[1]}
    started = cloudretail(
        "up", "--spec", SPEC, "--detach", "--demo", "--reset", "--data-dir", str(data_dir),
        cwd=project, env=env, timeout=150,
    )  # fmt: skip
    try:
        if started.returncode != 0:
            for log in sorted((data_dir / "logs").glob("*.log")):
                print(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-30:]))
        assert started.returncode == 0, started.stdout + started.stderr
        with httpx.Client(base_url=GATEWAY, timeout=30.0) as client:
            yield Library(client), started.stdout
    finally:
        stopped = cloudretail("down", "--data-dir", str(data_dir), cwd=project)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def test_the_library_runs_through_its_gateway(library: tuple[Library, str]):
    lib, output = library
    client = lib.client
    # `up --demo` loaded spec/demo.yaml: a librarian, a reader, six titles of two copies.
    assert "demo:" in output and "not loaded" not in output, output
    public = client.get("/api/catalog/titles", params={"author": "Jane Austen"})
    assert public.status_code == 200, public.text
    assert [t["title"] for t in public.json()["items"]] == ["Pride and Prejudice"]
    assert client.get("/api/catalog/titles").json()["total"] == 6

    member_id, member = lib.member()
    me = client.get("/api/members/me", headers=member)
    assert me.status_code == 200, me.text
    assert (me.json()["id"], me.json()["role"]) == (member_id, "member")
    assert client.get("/api/members/me").status_code == 401

    # Admin only: the member list; a librarian made by the admin.
    admin = lib.login(*ADMIN)
    assert client.get("/api/members", headers=member).status_code == 403
    listed = client.get("/api/members", params={"role": "librarian"}, headers=admin)
    assert listed.status_code == 200 and listed.json()["total"] == 1, listed.text
    email = f"librarian-{uuid.uuid4().hex[:8]}@library.example"
    staff = {"email": email, "password": PASSWORD, "name": "Shelver", "role": "librarian"}
    assert client.post("/api/members/staff", json=staff, headers=member).status_code == 403
    made = client.post("/api/members/staff", json=staff, headers=admin)
    assert made.status_code == 201, made.text
    librarian = lib.login(email, PASSWORD)

    # `roles: [librarian, admin]`: a member may not add to the catalog, a librarian may.
    title = {
        "isbn": f"978-{uuid.uuid4().int % 10**10:010d}",
        "title": "Walden",
        "author": "Thoreau",
    }
    assert client.post("/api/catalog/titles", json=title, headers=member).status_code == 403
    added = client.post("/api/catalog/titles", json=title, headers=librarian)
    assert added.status_code == 201, added.text
    copies = []
    for number in (1, 2):
        made = client.post(
            f"/api/catalog/titles/{added.json()['id']}/copies",
            json={"barcode": f"WAL-{uuid.uuid4().hex[:6]}-{number}", "shelf": "B-1"},
            headers=librarian,
        )
        assert made.status_code == 201, made.text
        copies.append(made.json()["id"])

    # Service routes are not routed: the gateway does not know them.
    hold = {"loan_id": str(uuid.uuid4()), "copy_id": copies[0]}
    assert client.post("/internal/catalog/holds", json=hold, headers=admin).status_code == 404

    # The borrow saga, to the end: held, deposit taken, lent.
    loan = client.post("/api/loans", json={"copy_id": copies[0]}, headers=member)
    assert loan.status_code == 201, loan.text
    assert loan.json()["status"] == "active" and loan.json()["due_at"], loan.text
    loan_id = loan.json()["id"]
    assert lib.copy(copies[0])["status"] == "lent"
    assert lib.copy(copies[0])["loan_id"] == loan_id
    deposits = client.get("/api/fees/mine", headers=member).json()["items"]
    assert [(f["kind"], f["status"], f["amount"]) for f in deposits] == [
        ("deposit", "charged", "2.00")
    ]
    # The copy is out: another member's hold is refused (409), nothing to undo.
    _, other = lib.member()
    taken = client.post("/api/loans", json={"copy_id": copies[0]}, headers=other)
    assert taken.status_code == 409, taken.text

    # Compensated: a fined member's deposit is refused (402) after the hold was placed, and
    # the hold is released; the copy is available again.
    fined_id, fined = lib.member()
    fine = {"member_id": fined_id, "amount": "6.00", "reason": "a drowned paperback"}
    assert client.post("/api/fees/fines", json=fine, headers=member).status_code == 403
    assert client.post("/api/fees/fines", json=fine, headers=librarian).status_code == 201
    correlation = f"library-test-{uuid.uuid4().hex}"
    refused = client.post(
        "/api/loans",
        json={"copy_id": copies[1]},
        headers={**fined, "X-Correlation-ID": correlation},
    )
    assert refused.status_code == 402, refused.text
    assert refused.json()["loan"]["status"] == "refused"
    assert refused.json()["loan"]["reason"].startswith("take_deposit:")
    assert lib.copy(copies[1])["status"] == "available"
    assert lib.copy(copies[1])["loan_id"] is None

    def traced() -> set[str]:
        found = client.get("/api/events", params={"correlationId": correlation}, headers=admin)
        assert found.status_code == 200, found.text
        return {event["type"] for event in found.json()["items"]}

    wanted = {"loan.requested", "copy.held", "copy.released", "loan.refused"}
    assert eventually(lambda: wanted <= traced(), timeout=15, pause=0.2), traced()
    assert client.get("/api/events", headers=member).status_code == 403

    # Returned: the catalog and fees act on `loan.returned` (consumed events).
    back = client.post(f"/api/loans/{loan_id}/return", headers=member)
    assert back.status_code == 200 and back.json()["status"] == "returned", back.text
    assert eventually(lambda: lib.copy(copies[0])["status"] == "available", timeout=15, pause=0.2)

    def refunded() -> bool:
        fees = client.get("/api/fees/mine", headers=member).json()["items"]
        return [f["status"] for f in fees] == ["refunded"]

    assert eventually(refunded, timeout=15, pause=0.2)
    report = client.get("/api/loans/reports/overdue", headers=librarian)
    assert report.status_code == 200 and report.json() == {"items": []}, report.text
    assert client.get("/api/loans/reports/overdue", headers=member).status_code == 403
    assert json.loads(client.get(f"/api/loans/{loan_id}", headers=other).text)["status"] == 404
