"""A small byte cache: Redis when configured, an in-process TTL map otherwise.

`get`, `set`, `delete` and `delete_prefix` are best effort: a Redis outage reads as a miss.
`incr`, `add` and `remaining` are for counters, claims and locks, where a guess would open
what they guard (a failure count read as 0, a one-time claim read as won): they are atomic
and raise `CacheUnavailableError` instead.

Redis over TLS: a `rediss://` URL, and with REDIS_CA_FILE the server's certificate must
chain to that CA and name the URL's host (`redis_client`, which the event store uses too).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import OrderedDict
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qs, urlsplit

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

logger = logging.getLogger(__name__)

CacheValue = bytes | str


class CacheUnavailableError(RuntimeError):
    """The backend did not answer an operation whose result the caller must not guess."""


@runtime_checkable
class Cache(Protocol):
    """What services use. Keys are namespaced by the implementation; ttl is in seconds."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: CacheValue, ttl: float | None = None) -> None: ...

    async def delete(self, key: str) -> bool: ...

    async def delete_prefix(self, prefix: str) -> int: ...

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Add `amount` to the integer at `key` (0 when absent) atomically; the new value.

        `ttl` is applied only when the key has no expiry yet (this call created it): a fixed
        window from the first increment. Raises ValueError if the value is not an integer,
        CacheUnavailableError if the backend does not answer.
        """
        ...

    async def add(self, key: str, value: CacheValue, ttl: float | None = None) -> bool:
        """Store `value` only if `key` is absent, atomically; True when this call stored it.

        Raises CacheUnavailableError if the backend does not answer.
        """
        ...

    async def remaining(self, key: str) -> float | None:
        """Seconds until `key` expires: None when absent, math.inf when it never expires.

        Raises CacheUnavailableError if the backend does not answer.
        """
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


def check_redis_tls(url: str | None, ca_file: str | None) -> None:
    """Refuse a CA file that would not be used: with REDIS_CA_FILE the URL must ask for TLS
    (rediss://) and must not weaken the verification with its own `ssl_*` options."""
    if not ca_file:
        return
    parts = urlsplit(url or "")
    if parts.scheme != "rediss":
        raise ValueError(
            f"REDIS_CA_FILE is set, so REDIS_URL must be a rediss:// (TLS) URL, "
            f"got {parts.scheme + '://' if parts.scheme else 'none'}"
        )
    overrides = sorted(name for name in parse_qs(parts.query) if name.startswith("ssl_"))
    if overrides:
        raise ValueError(
            f"REDIS_URL sets {', '.join(overrides)}, which would override the verification "
            "against REDIS_CA_FILE; leave them out"
        )


def redis_client(url: str, ca_file: str | None = None, **options: Any) -> Redis:
    """redis-py's asyncio client for `url`; over TLS with `ca_file`, the server verified
    against it, host name included (CERT_REQUIRED, as a browser checks a site)."""
    check_redis_tls(url, ca_file)
    if ca_file:
        options |= {
            "ssl_cert_reqs": "required",
            "ssl_ca_certs": ca_file,
            "ssl_check_hostname": True,
        }
    return Redis.from_url(url, **options)


def _describe(error: BaseException) -> str:
    # redis-py's repr of its errors names only the class ("network:ConnectionError"); the
    # message says why (refused, timed out, certificate verify failed, ...).
    return f"{type(error).__name__}: {error}"


def _as_bytes(value: CacheValue) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _check_ttl(ttl: float | None) -> None:
    if ttl is not None and ttl <= 0:
        raise ValueError(f"ttl must be positive seconds or None, got {ttl}")


def _milliseconds(ttl: float) -> int:
    # Milliseconds, so fractional TTLs mean what they say; at least 1 ms or Redis refuses.
    return max(1, round(ttl * 1000))


def _namespace_prefix(namespace: str) -> str:
    return f"{namespace}:" if namespace else ""


class MemoryCache:
    """Per-process cache with TTLs and LRU eviction; replicas do not share it."""

    def __init__(self, namespace: str = "", max_entries: int = 10_000) -> None:
        self._prefix = _namespace_prefix(namespace)
        self._max_entries = max_entries
        # key -> (monotonic expiry or None, value); order is least recently used first.
        self._entries: OrderedDict[str, tuple[float | None, bytes]] = OrderedDict()

    def _key(self, key: str) -> str:
        return self._prefix + key

    def _live(self, full_key: str) -> tuple[float | None, bytes] | None:
        entry = self._entries.get(full_key)
        if entry is None:
            return None
        expires, _ = entry
        if expires is not None and expires <= time.monotonic():
            del self._entries[full_key]
            return None
        return entry

    async def get(self, key: str) -> bytes | None:
        full_key = self._key(key)
        entry = self._live(full_key)
        if entry is None:
            return None
        self._entries.move_to_end(full_key)
        return entry[1]

    async def set(self, key: str, value: CacheValue, ttl: float | None = None) -> None:
        _check_ttl(ttl)
        expires = None if ttl is None else time.monotonic() + ttl
        self._store(self._key(key), expires, _as_bytes(value))

    def _store(self, full_key: str, expires: float | None, value: bytes) -> None:
        self._entries[full_key] = (expires, value)
        self._entries.move_to_end(full_key)
        if len(self._entries) > self._max_entries:
            self._evict()

    def _evict(self) -> None:
        now = time.monotonic()
        for key in [k for k, (expires, _) in self._entries.items() if expires and expires <= now]:
            del self._entries[key]
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def delete(self, key: str) -> bool:
        return self._entries.pop(self._key(key), None) is not None

    # No await between reading and writing an entry: on one event loop that is atomic.

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        _check_ttl(ttl)
        full_key = self._key(key)
        entry = self._live(full_key)
        expires, current = entry if entry is not None else (None, b"0")
        try:
            value = int(current) + amount
        except ValueError:
            raise ValueError(f"the value at {key!r} is not an integer") from None
        if expires is None and ttl is not None:
            expires = time.monotonic() + ttl
        self._store(full_key, expires, str(value).encode())
        return value

    async def add(self, key: str, value: CacheValue, ttl: float | None = None) -> bool:
        _check_ttl(ttl)
        full_key = self._key(key)
        if self._live(full_key) is not None:
            return False
        self._store(full_key, None if ttl is None else time.monotonic() + ttl, _as_bytes(value))
        return True

    async def remaining(self, key: str) -> float | None:
        entry = self._live(self._key(key))
        if entry is None:
            return None
        expires = entry[0]
        return math.inf if expires is None else max(0.0, expires - time.monotonic())

    async def delete_prefix(self, prefix: str) -> int:
        full_prefix = self._key(prefix)
        doomed = [key for key in self._entries if key.startswith(full_prefix)]
        for key in doomed:
            del self._entries[key]
        return len(doomed)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._entries.clear()


_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


class RedisCache:
    """Redis-backed cache shared by every replica.

    Failures degrade to cache misses with a warning instead of failing the request: the
    database is still there, and the readiness probe reports the cache as down.
    """

    def __init__(self, client: Redis, namespace: str = "", scan_batch: int = 500) -> None:
        self._client = client
        self._prefix = _namespace_prefix(namespace)
        self._scan_batch = scan_batch

    @classmethod
    def from_url(
        cls, url: str, namespace: str = "", timeout: float = 2.0, ca_file: str | None = None
    ) -> RedisCache:
        # Bounded socket timeouts: a stalled Redis must cost milliseconds, not a hung request.
        client = redis_client(
            url,
            ca_file,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            health_check_interval=30,
        )
        return cls(client, namespace=namespace)

    def _key(self, key: str) -> str:
        return self._prefix + key

    def _warn(self, operation: str, error: Exception) -> None:
        logger.warning(
            "cache operation failed", extra={"operation": operation, "error": _describe(error)}
        )

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self._client.get(self._key(key))
        except (RedisError, OSError) as error:
            self._warn("get", error)
            return None
        return value if value is None or isinstance(value, bytes) else str(value).encode()

    async def set(self, key: str, value: CacheValue, ttl: float | None = None) -> None:
        _check_ttl(ttl)
        expiry = None if ttl is None else _milliseconds(ttl)
        try:
            await self._client.set(self._key(key), _as_bytes(value), px=expiry)
        except (RedisError, OSError) as error:
            self._warn("set", error)

    async def delete(self, key: str) -> bool:
        try:
            return bool(await self._client.delete(self._key(key)))
        except (RedisError, OSError) as error:
            self._warn("delete", error)
            return False

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        _check_ttl(ttl)
        full_key = self._key(key)
        try:
            # MULTI/EXEC: the increment and the first expiry land together (NX: Redis >= 7).
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.incrby(full_key, amount)
                if ttl is not None:
                    pipe.pexpire(full_key, _milliseconds(ttl), nx=True)
                results = await pipe.execute()
        except ResponseError as error:
            if "not an integer" in str(error):
                raise ValueError(f"the value at {key!r} is not an integer") from None
            # Anything else (read-only replica, out of memory, ...) is the backend failing.
            self._warn("incr", error)
            raise CacheUnavailableError(f"cache unavailable: {_describe(error)}") from error
        except (RedisError, OSError) as error:
            self._warn("incr", error)
            raise CacheUnavailableError(f"cache unavailable: {_describe(error)}") from error
        return int(results[0])

    async def add(self, key: str, value: CacheValue, ttl: float | None = None) -> bool:
        _check_ttl(ttl)
        expiry = None if ttl is None else _milliseconds(ttl)
        try:
            stored = await self._client.set(self._key(key), _as_bytes(value), px=expiry, nx=True)
        except (RedisError, OSError) as error:
            self._warn("add", error)
            raise CacheUnavailableError(f"cache unavailable: {_describe(error)}") from error
        return bool(stored)

    async def remaining(self, key: str) -> float | None:
        try:
            milliseconds = int(await self._client.pttl(self._key(key)))
        except (RedisError, OSError) as error:
            self._warn("remaining", error)
            raise CacheUnavailableError(f"cache unavailable: {_describe(error)}") from error
        if milliseconds == -2:
            return None
        return math.inf if milliseconds == -1 else milliseconds / 1000

    async def delete_prefix(self, prefix: str) -> int:
        # SCAN, not KEYS: KEYS blocks Redis for every client while it walks the keyspace.
        pattern = _GLOB_SPECIAL.sub(r"\\\1", self._key(prefix)) + "*"
        deleted = 0
        batch: list[bytes | str] = []
        try:
            async for key in self._client.scan_iter(match=pattern, count=self._scan_batch):
                batch.append(key)
                if len(batch) >= self._scan_batch:
                    deleted += await self._client.unlink(*batch)
                    batch.clear()
            if batch:
                deleted += await self._client.unlink(*batch)
        except (RedisError, OSError) as error:
            self._warn("delete_prefix", error)
        return deleted

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except Exception as error:
            self._warn("ping", error)
            return False

    async def close(self) -> None:
        await self._client.aclose()


def make_cache(redis_url: str | None, namespace: str = "", ca_file: str | None = None) -> Cache:
    """Redis when a URL is configured (over TLS verified against `ca_file` when given),
    otherwise the in-process cache."""
    if redis_url:
        return RedisCache.from_url(redis_url, namespace=namespace, ca_file=ca_file)
    return MemoryCache(namespace=namespace)
