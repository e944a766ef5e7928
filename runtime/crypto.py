"""Encryption at rest for columns: a key ring of AES-256-GCM keys, each known by an id.

A stored value is `enc:v1:<key id>:<nonce + ciphertext + tag, base64url without padding>`.
The first key of the ring writes; every key of the ring reads, so keys rotate without
downtime: deploy the ring `new,old` (new values go under `new`, old ones still read), run
the rotation (runtime/rotate.py) to re-encrypt what is stored, then drop `old`.

The column (`"table.column"`) is the associated data, so a value copied into another
column does not decrypt. Errors say what failed and where, never the plaintext or a key.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "enc:v1:"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
# A well-known placeholder (32 zero bytes) for development setups; production refuses it.
DEVELOPMENT_KEYS = "dev:" + base64.b64encode(bytes(KEY_BYTES)).decode("ascii")

_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


class EncryptionError(ValueError):
    """A value or key ring that cannot be used: says what and where, never a secret."""


def is_encrypted(value: str) -> bool:
    return value.startswith(PREFIX)


@dataclass(frozen=True)
class KeyRing:
    """Keys by id: `active` encrypts, every key in `key_ids` decrypts."""

    active: str
    key_ids: tuple[str, ...]
    _ciphers: Mapping[str, AESGCM] = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        if set(self.key_ids) != set(self._ciphers) or self.active not in self._ciphers:
            raise EncryptionError("the active key and the key ids must be keys of the ring")

    @classmethod
    def parse(cls, text: str) -> KeyRing:
        """`id:base64key,id:base64key,...`: the first entry is the active key."""
        if not text.strip():
            raise EncryptionError("the key ring is empty: give id:base64key entries, active first")
        ciphers: dict[str, AESGCM] = {}
        for position, entry in enumerate(text.split(","), start=1):
            key_id, key = _parse_entry(entry.strip(), position)
            if key_id in ciphers:
                first = list(ciphers).index(key_id) + 1
                raise EncryptionError(
                    f"key ring entry {position}: key id {key_id!r} is already entry {first}"
                )
            ciphers[key_id] = AESGCM(key)
        ids = tuple(ciphers)
        return cls(active=ids[0], key_ids=ids, _ciphers=ciphers)

    @staticmethod
    def new_entry(key_id: str) -> str:
        """A fresh `id:base64key` entry with a random key, to put first in the ring."""
        if not _KEY_ID.fullmatch(key_id):
            raise EncryptionError("a key id is 1 to 32 letters, digits, '-' or '_'")
        return f"{key_id}:{base64.b64encode(os.urandom(KEY_BYTES)).decode('ascii')}"

    def encrypt(self, plaintext: str, context: str) -> str:
        """`plaintext` under the active key, bound to `context` ("table.column")."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[self.active].encrypt(
            nonce, plaintext.encode("utf-8"), context.encode("utf-8")
        )
        payload = base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")
        return f"{PREFIX}{self.active}:{payload}"

    def decrypt(self, stored: str, context: str) -> str:
        """The plaintext of a value `encrypt` made for the same `context`."""
        key_id, payload = _split(stored, context)
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise EncryptionError(
                f"{context}: the value is under key {key_id!r}, which is not in the key ring "
                f"({', '.join(self.key_ids)})"
            )
        sealed = _decode_payload(payload, context, key_id)
        try:
            plain = cipher.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], context.encode())
        except InvalidTag:
            raise EncryptionError(
                f"{context}: the value under key {key_id!r} does not authenticate "
                "(altered, or encrypted for another column)"
            ) from None
        return plain.decode("utf-8")

    def is_current(self, stored: str) -> bool:
        """True when `stored` is encrypted under the active key."""
        return stored.startswith(f"{PREFIX}{self.active}:")

    def key_of(self, stored: str) -> str | None:
        """The key id `stored` is encrypted under; None for a value that is not encrypted."""
        if not is_encrypted(stored):
            return None
        return _split(stored, "value")[0]


def _parse_entry(entry: str, position: int) -> tuple[str, bytes]:
    where = f"key ring entry {position}"
    if not entry:
        raise EncryptionError(f"{where} is empty")
    key_id, colon, encoded = entry.partition(":")
    if not colon:
        raise EncryptionError(f"{where} is not of the form id:base64key")
    if not _KEY_ID.fullmatch(key_id):
        raise EncryptionError(f"{where}: a key id is 1 to 32 letters, digits, '-' or '_'")
    try:
        key = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise EncryptionError(f"{where} (key id {key_id!r}): the key is not base64") from None
    if len(key) != KEY_BYTES:
        raise EncryptionError(
            f"{where} (key id {key_id!r}): the key is {len(key)} bytes, "
            f"AES-256 needs {KEY_BYTES} (e.g. `openssl rand -base64 32`)"
        )
    return key_id, key


def _split(stored: str, context: str) -> tuple[str, str]:
    """`enc:v1:<id>:<payload>` -> (id, payload)."""
    if not is_encrypted(stored):
        raise EncryptionError(f"{context}: the value is not encrypted (no {PREFIX!r} prefix)")
    key_id, colon, payload = stored.removeprefix(PREFIX).partition(":")
    if not colon or not _KEY_ID.fullmatch(key_id):
        raise EncryptionError(f"{context}: the encrypted value has no valid key id")
    return key_id, payload


def _decode_payload(payload: str, context: str, key_id: str) -> bytes:
    problem = f"{context}: the value under key {key_id!r} is damaged"
    if not _BASE64URL.fullmatch(payload):
        raise EncryptionError(f"{problem} (not base64url)")
    try:
        sealed = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    except binascii.Error:
        raise EncryptionError(f"{problem} (truncated base64url)") from None
    if len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise EncryptionError(f"{problem} (too short to hold a nonce and a tag)")
    return sealed


_ring: KeyRing | None = None


def configure(ring: KeyRing | None) -> None:
    """Set (or with None, clear) the process-wide ring `EncryptedText` columns use."""
    global _ring
    _ring = ring


def current_ring() -> KeyRing:
    if _ring is None:
        raise EncryptionError("no encryption key is configured (ENCRYPTION_KEYS)")
    return _ring
