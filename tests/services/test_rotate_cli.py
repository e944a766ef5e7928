"""`cloudretail rotate-key`: every encrypted column of the chosen services moves to the first
key of ENCRYPTION_KEYS, plaintext written before the column was encrypted included; a
rerun has nothing to do; bad input is a one-line error (exit 2), never a traceback."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest
from cloudretail.cli import app
from cloudretail.runtime.crypto import KeyRing
from typer.testing import CliRunner

runner = CliRunner()
CONTEXT = "users.two_factor_secret"


def _users(database: Path, secrets: list[str]) -> None:
    with sqlite3.connect(database) as connection:
        for index, secret in enumerate(secrets):
            connection.execute(
                "INSERT INTO users (id, email, password, first_name, last_name, role, "
                "gdpr_consent, two_factor_secret) VALUES (?, ?, 'x', 'A', 'B', 'customer', 1, ?)",
                (uuid.uuid4().hex, f"u{index}@example.com", secret),
            )


def _migrated(folder: Path) -> str:
    """The user service's database, migrated, as a SQLite file in `folder`: its URL template."""
    template = f"sqlite+aiosqlite:///{folder}/{{database}}.db"
    result = runner.invoke(app, ["migrate", "user", "--database-url-template", template])
    assert result.exit_code == 0, result.output
    return template


def _stored(database: Path) -> list[str]:
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT two_factor_secret FROM users ORDER BY email")
        return [row[0] for row in rows]


def test_rotate_key_moves_every_secret_to_the_new_key(
    in_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = _migrated(tmp_path)
    old, new = KeyRing.new_entry("old"), KeyRing.new_entry("new")
    before = KeyRing.parse(old)
    database = tmp_path / "cloudretail_users.db"
    _users(
        database, [before.encrypt("AAAA2222", CONTEXT), "PLAINTEXT77", before.encrypt("B", CONTEXT)]
    )

    monkeypatch.setenv("ENCRYPTION_KEYS", f"{new},{old}")
    arguments = ["rotate-key", "--database-url-template", template, "--batch-size", "2"]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "user       users: 2 rows re-encrypted" in result.stdout
    assert "3 rows now under key new" in result.stdout

    ring = KeyRing.parse(f"{new},{old}")
    stored = _stored(database)
    assert all(value.startswith("enc:v1:new:") for value in stored)
    assert "PLAINTEXT77" not in "".join(stored)
    assert [ring.decrypt(value, CONTEXT) for value in stored] == ["AAAA2222", "PLAINTEXT77", "B"]

    again = runner.invoke(app, arguments)
    assert again.exit_code == 0 and "0 rows now under key new" in again.stdout


@pytest.mark.parametrize(
    ("keys", "arguments", "message"),
    [
        (None, [], "ENCRYPTION_KEYS is not set"),
        ("new:short", [], "ENCRYPTION_KEYS: key ring entry 1"),
        (KeyRing.new_entry("k"), ["usr"], "unknown service usr (did you mean 'user'?)"),
    ],
)
def test_rotate_key_refuses_bad_input_in_one_line(
    in_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    keys: str | None,
    arguments: list[str],
    message: str,
) -> None:
    if keys is None:
        monkeypatch.delenv("ENCRYPTION_KEYS", raising=False)
    else:
        monkeypatch.setenv("ENCRYPTION_KEYS", keys)
    result = runner.invoke(app, ["rotate-key", *arguments])
    assert result.exit_code == 2
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.output


def test_rotate_key_stops_at_a_value_no_key_opens(
    in_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = _migrated(tmp_path)
    lost = KeyRing.parse(KeyRing.new_entry("lost"))
    database = tmp_path / "cloudretail_users.db"
    _users(database, [lost.encrypt("S1", CONTEXT)])
    monkeypatch.setenv("ENCRYPTION_KEYS", KeyRing.new_entry("new"))
    result = runner.invoke(app, ["rotate-key", "--database-url-template", template])
    assert result.exit_code == 2
    assert "error: user: users row" in result.stderr and "lost" in result.stderr
    assert _stored(database)[0].startswith("enc:v1:lost:")  # left as it was
