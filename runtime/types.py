"""Column types that behave the same on SQLite (development) and PostgreSQL (deployments)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from cloudretail.runtime.crypto import current_ring, is_encrypted
from sqlalchemy import JSON, DateTime, Numeric, Text, Uuid
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

# JSONB on PostgreSQL for indexing and containment queries; plain JSON text elsewhere.
JSONType: TypeEngine[Any] = JSON().with_variant(JSONB(), "postgresql")

# Native `uuid` on PostgreSQL, CHAR(32) on SQLite; Python side is always uuid.UUID.
GUID = Uuid


def utc_now() -> datetime:
    """Default for timestamp columns: aware and in UTC, never the server's local time."""
    return datetime.now(UTC)


class DecimalType(TypeDecorator[Decimal]):
    """NUMERIC(precision, scale) that is Decimal in and Decimal out on every backend.

    PostgreSQL rounds to the scale and rejects values too large for the precision; SQLite
    stores whatever it gets as a float. Doing both here keeps development honest about what
    production will do, and hands back exactly `scale` places (Decimal("10.00"), not 10.0).
    """

    impl = Numeric
    cache_ok = True

    def __init__(self, precision: int = 10, scale: int = 2) -> None:
        if not 0 <= scale <= precision:
            raise ValueError(f"scale must be between 0 and precision, got {precision}, {scale}")
        # SQLite hands Numeric back through a float; past 15 digits that loses cents.
        super().__init__(precision=precision, scale=scale, asdecimal=True)
        self.precision = precision
        self.scale = scale
        self._quantum = Decimal(1).scaleb(-scale)
        self._limit = Decimal(10) ** (precision - scale)

    def _coerce(self, value: Decimal | int | float | str) -> Decimal:
        try:
            # Going through str keeps 0.1 as 0.1 instead of its binary approximation.
            number = value if isinstance(value, Decimal) else Decimal(str(value))
            # Half away from zero, as PostgreSQL rounds numeric.
            rounded = number.quantize(self._quantum, rounding=ROUND_HALF_UP)
        except InvalidOperation as error:
            raise ValueError(
                f"{value!r} is not a valid NUMERIC({self.precision},{self.scale})"
            ) from error
        if not rounded.is_finite() or abs(rounded) >= self._limit:
            raise ValueError(
                f"{value!r} does not fit NUMERIC({self.precision},{self.scale}): "
                f"the absolute value must be below {self._limit}"
            )
        return rounded

    def process_bind_param(
        self, value: Decimal | int | float | str | None, dialect: Dialect
    ) -> Decimal | None:
        return None if value is None else self._coerce(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        number = value if isinstance(value, Decimal) else Decimal(str(value))
        return number.quantize(self._quantum)

    @property
    def python_type(self) -> type[Decimal]:
        return Decimal


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamp that is always an aware UTC datetime when read back.

    SQLite has no time zones and returns naive values; storing UTC there and re-attaching
    the zone on the way out makes comparisons with `utc_now()` work on both backends.
    Naive datetimes are refused on the way in because their zone is a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: give it a time zone, e.g. UTC")
        in_utc = value.astimezone(UTC)
        return in_utc.replace(tzinfo=None) if dialect.name == "sqlite" else in_utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @property
    def python_type(self) -> type[datetime]:
        return datetime


class EncryptedText(TypeDecorator[str]):
    """Text stored encrypted (AES-256-GCM, runtime/crypto.py) under the process's key ring.

    `context` is the column, `"table.column"`: it is bound into every value, so a value
    copied into another column does not decrypt. A value without the `enc:v1:` prefix is a
    row written before the column was encrypted and reads back as it is (the key rotation
    encrypts those). Each write uses a fresh nonce, so comparing the column with a value
    in SQL never matches: look rows up by another column.
    """

    impl = Text
    cache_ok = True

    def __init__(self, context: str) -> None:
        super().__init__()
        self.context = context

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else current_ring().encrypt(value, self.context)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None or not is_encrypted(value):
            return value
        return current_ring().decrypt(value, self.context)

    @property
    def python_type(self) -> type[str]:
        return str
