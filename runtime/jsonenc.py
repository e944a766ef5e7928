"""One JSON encoding for logs and JSON columns, so a Decimal or UUID never breaks either."""

from __future__ import annotations

import json
from datetime import date, datetime, time
from decimal import Decimal
from enum import Enum
from uuid import UUID


def json_default(value: object) -> object:
    """`json.dumps` fallback for the types services actually put in payloads."""
    # Decimal becomes a string, as pydantic renders it, so money keeps every digit.
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def dumps(value: object) -> str:
    """Compact JSON text; non-ASCII kept as is because logs and columns are UTF-8."""
    return json.dumps(value, default=json_default, separators=(",", ":"), ensure_ascii=False)
