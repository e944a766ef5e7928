"""Encrypted columns: the key ring, AES-256-GCM values, the column type, and the settings
and app checks that keep a service from running without a (real) key."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from cloudretail.runtime.app import create_service_app
from cloudretail.runtime.config import load_settings
from cloudretail.runtime.crypto import (
    DEVELOPMENT_KEYS,
    PREFIX,
    EncryptionError,
    KeyRing,
    configure,
    current_ring,
    is_encrypted,
)
from cloudretail.runtime.db import Database
from cloudretail.runtime.types import EncryptedText
from pydantic import ValidationError
from sqlalchemy import Column, Integer, MetaData, Table, insert, select, text
from sqlalchemy.exc import StatementError

from tests.runtime.conftest import make_settings

CONTEXT = "users.two_factor_secret"
PLAINTEXT = "JBSWY3DPEHPK3PXP"
KEY_A = base64.b64encode(bytes(range(32))).decode()
KEY_B = base64.b64encode(bytes(range(100, 132))).decode()
STRONG_TOKEN = "3f9c1e7a5b2d4086c8e1f3a7b9d5026e4c8a1f3b5d7e9026"


@pytest.fixture(autouse=True)
def no_process_ring() -> Iterator[None]:
    configure(None)
    yield
    configure(None)


def ring(text: str = f"a:{KEY_A}") -> KeyRing:
    return KeyRing.parse(text)


def payload_of(stored: str) -> bytes:
    encoded = stored.rpartition(":")[2]
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))


def with_payload(stored: str, payload: bytes) -> str:
    head = stored.rpartition(":")[0]
    return f"{head}:{base64.urlsafe_b64encode(payload).rstrip(b'=').decode()}"


def test_a_value_round_trips_and_shows_neither_plaintext_nor_padding() -> None:
    keys = ring()
    for plaintext in (PLAINTEXT, "", "ünïcødé ✓"):
        stored = keys.encrypt(plaintext, CONTEXT)
        assert stored.startswith(f"{PREFIX}a:")
        assert "=" not in stored
        assert keys.decrypt(stored, CONTEXT) == plaintext
    assert PLAINTEXT not in keys.encrypt(PLAINTEXT, CONTEXT)
    # 12-byte nonce + ciphertext + 16-byte tag.
    assert len(payload_of(keys.encrypt(PLAINTEXT, CONTEXT))) == 12 + len(PLAINTEXT) + 16


def test_two_encryptions_of_one_plaintext_differ() -> None:
    keys = ring()
    first, second = keys.encrypt(PLAINTEXT, CONTEXT), keys.encrypt(PLAINTEXT, CONTEXT)
    assert first != second
    assert payload_of(first)[:12] != payload_of(second)[:12]


def test_a_value_copied_into_another_column_does_not_decrypt() -> None:
    keys = ring()
    stored = keys.encrypt(PLAINTEXT, "users.two_factor_secret")
    with pytest.raises(EncryptionError, match=r"users\.recovery_code") as caught:
        keys.decrypt(stored, "users.recovery_code")
    assert PLAINTEXT not in str(caught.value)


@pytest.mark.parametrize(
    "position", [0, 11, 12, -17, -1], ids=["nonce", "nonce-end", "body", "body-end", "tag-end"]
)
def test_a_flipped_byte_is_refused(position: int) -> None:
    keys = ring()
    stored = keys.encrypt(PLAINTEXT, CONTEXT)
    sealed = bytearray(payload_of(stored))
    sealed[position] ^= 0x01
    with pytest.raises(EncryptionError, match="does not authenticate") as caught:
        keys.decrypt(with_payload(stored, bytes(sealed)), CONTEXT)
    assert PLAINTEXT not in str(caught.value)


@pytest.mark.parametrize("keep", [-1, -2, -6, 30, 0])
def test_a_truncated_value_is_refused(keep: int) -> None:
    keys = ring()
    stored = keys.encrypt(PLAINTEXT, CONTEXT)
    head, _, encoded = stored.rpartition(":")
    with pytest.raises(EncryptionError, match=CONTEXT):
        keys.decrypt(f"{head}:{encoded[:keep]}", CONTEXT)


@pytest.mark.parametrize(
    "stored", [f"{PREFIX}a:not*base64", f"{PREFIX}a", f"{PREFIX}:AAAA", "plain text"]
)
def test_a_malformed_value_is_refused(stored: str) -> None:
    with pytest.raises(EncryptionError, match=CONTEXT):
        ring().decrypt(stored, CONTEXT)


def test_a_value_under_an_unknown_key_is_refused_naming_the_key() -> None:
    stored = ring(f"b:{KEY_B}").encrypt(PLAINTEXT, CONTEXT)
    with pytest.raises(EncryptionError, match=r"key 'b', which is not in the key ring \(a\)"):
        ring().decrypt(stored, CONTEXT)


def test_a_ring_of_new_and_old_keys_reads_both_and_writes_with_the_new() -> None:
    old = ring(f"a:{KEY_A}").encrypt(PLAINTEXT, CONTEXT)
    rotated = ring(f"b:{KEY_B},a:{KEY_A}")
    new = rotated.encrypt("fresh", CONTEXT)
    assert rotated.active == "b"
    assert rotated.key_ids == ("b", "a")
    assert rotated.decrypt(old, CONTEXT) == PLAINTEXT
    assert rotated.decrypt(new, CONTEXT) == "fresh"
    assert (rotated.is_current(old), rotated.is_current(new)) == (False, True)
    assert (rotated.key_of(old), rotated.key_of(new), rotated.key_of(PLAINTEXT)) == ("a", "b", None)
    with pytest.raises(EncryptionError, match="'b'"):
        ring(f"a:{KEY_A}").decrypt(new, CONTEXT)


def test_is_encrypted_looks_for_the_prefix() -> None:
    assert is_encrypted(ring().encrypt(PLAINTEXT, CONTEXT))
    assert not is_encrypted(PLAINTEXT)
    assert not is_encrypted("enc:v2:a:AAAA")


def test_is_current_does_not_take_a_similar_key_id_for_the_active_one() -> None:
    keys = ring(f"k:{KEY_A},kk:{KEY_B}")
    under_kk = ring(f"kk:{KEY_B}").encrypt(PLAINTEXT, CONTEXT)
    assert not keys.is_current(under_kk)


@pytest.mark.parametrize(
    ("text", "position", "problem"),
    [
        ("", None, "empty"),
        ("   ", None, "empty"),
        (KEY_A, 1, "id:base64key"),
        (f"a:{KEY_A},{KEY_B}", 2, "id:base64key"),
        (f"a:{KEY_A},", 2, "empty"),
        (f"a:{KEY_A[:-4]}!!!!", 1, "not base64"),
        (f"a:{base64.b64encode(bytes(16)).decode()}", 1, "16 bytes"),
        (f"a:{KEY_A},b:{KEY_B},a:{KEY_B}", 3, "'a' is already entry 1"),
        (f"bad id:{KEY_A}", 1, "key id"),
        (f"{'x' * 33}:{KEY_A}", 1, "key id"),
    ],
)
def test_a_malformed_ring_is_refused_naming_the_entry_never_the_key(
    text: str, position: int | None, problem: str
) -> None:
    with pytest.raises(EncryptionError) as caught:
        KeyRing.parse(text)
    message = str(caught.value)
    assert problem in message
    if position is not None:
        assert f"entry {position}" in message
    for key in (KEY_A, KEY_B, KEY_A[:-4], KEY_A[:12], KEY_B[:12]):
        assert key not in message


def test_new_entry_makes_a_fresh_32_byte_key() -> None:
    first, second = KeyRing.new_entry("2025-06"), KeyRing.new_entry("2025-06")
    assert first != second
    assert first.startswith("2025-06:")
    assert len(base64.b64decode(first.partition(":")[2])) == 32
    keys = KeyRing.parse(f"{first},a:{KEY_A}")
    assert keys.active == "2025-06"
    assert keys.decrypt(keys.encrypt(PLAINTEXT, CONTEXT), CONTEXT) == PLAINTEXT
    with pytest.raises(EncryptionError, match="key id"):
        KeyRing.new_entry("no:colons")


def test_the_ring_keeps_its_keys_out_of_repr() -> None:
    assert KEY_A not in repr(ring())
    assert "a" in repr(ring())


def test_the_development_keys_are_a_valid_ring_of_zero_bytes() -> None:
    keys = KeyRing.parse(DEVELOPMENT_KEYS)
    assert keys.active == "dev"
    assert DEVELOPMENT_KEYS.partition(":")[2] == base64.b64encode(bytes(32)).decode()


def test_without_a_configured_ring_there_is_no_current_ring() -> None:
    with pytest.raises(
        EncryptionError, match=r"no encryption key is configured \(ENCRYPTION_KEYS\)"
    ):
        current_ring()
    configure(ring())
    assert current_ring().active == "a"


# --- The column type, through a real table ---------------------------------------------

metadata = MetaData()
users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("two_factor_secret", EncryptedText(CONTEXT), nullable=True),
)


async def test_encrypted_text_stores_ciphertext_and_reads_plaintext(tmp_path: Path) -> None:
    configure(ring())
    database = Database(f"sqlite+aiosqlite:///{tmp_path}/users.db")
    try:
        async with database.engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
            await connection.execute(
                insert(users),
                [{"id": 1, "two_factor_secret": PLAINTEXT}, {"id": 2, "two_factor_secret": None}],
            )
            # A row from before the column was encrypted.
            await connection.execute(text("INSERT INTO users VALUES (3, 'legacy-plain')"))
        async with database.engine.connect() as connection:
            raw = dict(
                (await connection.execute(text("SELECT id, two_factor_secret FROM users"))).all()
            )
            read = dict((await connection.execute(select(users).order_by(users.c.id))).all())
    finally:
        await database.dispose()
    assert raw[1].startswith(f"{PREFIX}a:")
    assert PLAINTEXT not in raw[1]
    assert ring().decrypt(raw[1], CONTEXT) == PLAINTEXT
    assert raw[2] is None
    assert read == {1: PLAINTEXT, 2: None, 3: "legacy-plain"}


async def test_encrypted_text_refuses_to_write_without_a_ring(tmp_path: Path) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path}/users.db")
    try:
        async with database.engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
        with pytest.raises(StatementError, match="no encryption key is configured"):
            async with database.engine.begin() as connection:
                await connection.execute(insert(users), {"id": 1, "two_factor_secret": PLAINTEXT})
    finally:
        await database.dispose()


def test_encrypted_text_keeps_its_column_in_the_cache_key() -> None:
    assert EncryptedText(CONTEXT).context == CONTEXT
    assert EncryptedText("a.b")._static_cache_key != EncryptedText("a.c")._static_cache_key
    assert EncryptedText(CONTEXT).python_type is str


# --- Settings and app assembly -----------------------------------------------------------


@pytest.fixture
def production(clean_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    clean_env.delenv("CLOUDRETAIL_ADMIN_EMAIL", raising=False)
    clean_env.delenv("CLOUDRETAIL_ADMIN_PASSWORD", raising=False)
    clean_env.setenv("ENVIRONMENT", "production")
    clean_env.setenv("SERVICE_TOKEN", STRONG_TOKEN)
    return clean_env


@pytest.mark.parametrize(
    "keys",
    [DEVELOPMENT_KEYS, f"new:{KEY_A},{DEVELOPMENT_KEYS}", f"b:{KEY_B},x:{DEVELOPMENT_KEYS[4:]}"],
)
def test_production_refuses_the_development_keys(production: pytest.MonkeyPatch, keys: str) -> None:
    production.setenv("ENCRYPTION_KEYS", keys)
    with pytest.raises(
        ValidationError, match="ENCRYPTION_KEYS still has the key of DEVELOPMENT_KEYS"
    ) as caught:
        load_settings("user", 3001, "cloudretail_users")
    assert DEVELOPMENT_KEYS[4:] not in str(caught.value)
    assert KEY_A not in str(caught.value)


def test_production_names_the_development_keys_beside_other_placeholders(
    production: pytest.MonkeyPatch,
) -> None:
    production.delenv("SERVICE_TOKEN")
    production.setenv("ENCRYPTION_KEYS", DEVELOPMENT_KEYS)
    with pytest.raises(ValidationError) as caught:
        load_settings("user", 3001, "cloudretail_users")
    assert 'SERVICE_TOKEN still has the placeholder value "changethis"' in str(caught.value)
    assert "ENCRYPTION_KEYS still has the key of DEVELOPMENT_KEYS" in str(caught.value)


def test_production_accepts_a_real_ring(production: pytest.MonkeyPatch) -> None:
    production.setenv("ENCRYPTION_KEYS", f"b:{KEY_B},a:{KEY_A}")
    settings = load_settings("user", 3001, "cloudretail_users")
    assert settings.encryption_keys is not None
    assert settings.encryption_keys.get_secret_value() == f"b:{KEY_B},a:{KEY_A}"
    assert KEY_B not in repr(settings)
    assert settings.default_secrets_in_use() == []


def test_development_runs_with_the_development_keys_but_lists_them(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("SERVICE_TOKEN", STRONG_TOKEN)
    clean_env.setenv("ENCRYPTION_KEYS", DEVELOPMENT_KEYS)
    settings = load_settings("user", 3001, "cloudretail_users")
    assert settings.default_secrets_in_use() == ["ENCRYPTION_KEYS"]


def test_an_app_with_encrypted_columns_refuses_to_build_without_keys(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/app.db")
    with pytest.raises(EncryptionError) as caught:
        create_service_app(settings, encrypted_columns=[CONTEXT, "users.recovery_codes"])
    assert str(caught.value) == (
        "ENCRYPTION_KEYS is not set; this service stores these columns encrypted: "
        "users.two_factor_secret, users.recovery_codes"
    )


def test_an_app_refuses_a_malformed_ring_without_echoing_it(tmp_path: Path) -> None:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/app.db", encryption_keys=f"a:{KEY_A[:20]}"
    )
    with pytest.raises(EncryptionError, match="ENCRYPTION_KEYS: key ring entry 1") as caught:
        create_service_app(settings, encrypted_columns=[CONTEXT])
    assert KEY_A[:20] not in str(caught.value)


def test_an_app_with_encrypted_columns_configures_the_ring(tmp_path: Path) -> None:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/app.db", encryption_keys=f"b:{KEY_B},a:{KEY_A}"
    )
    create_service_app(settings, encrypted_columns=[CONTEXT])
    assert current_ring().active == "b"
    assert current_ring().key_ids == ("b", "a")


def test_an_app_without_encrypted_columns_needs_no_keys(tmp_path: Path) -> None:
    create_service_app(make_settings(f"sqlite+aiosqlite:///{tmp_path}/app.db"))
    with pytest.raises(EncryptionError):
        current_ring()
