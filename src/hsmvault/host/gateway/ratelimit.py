"""Token buckets per token user and per client address (ADR 0008, "Rate limits").

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second; each
request takes one. An empty bucket refuses with the seconds until one token is back,
which the gateway sends as ``429`` with ``Retry-After``. The clock is injectable, and a
clock that steps backwards never adds tokens.

Memory is bounded: at most ``max_keys`` buckets are kept, least recently used dropped
first (a dropped bucket comes back full, so eviction errs towards serving).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from hsmvault.errors import InvalidParameter

from .config import RateLimit

__all__ = ["TokenBuckets"]


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """One token bucket per key, all with the same :class:`RateLimit`. Thread-safe."""

    def __init__(
        self,
        limit: RateLimit,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        if max_keys < 1:
            raise InvalidParameter("max_keys must be >= 1")
        self._limit = limit
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[Hashable, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: Hashable) -> float | None:
        """Take one token for ``key``: ``None`` if allowed, else the seconds to wait."""
        now = self._clock()
        rate, burst = self._limit.rate, float(self._limit.burst)
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = _Bucket(tokens=burst, updated=now)
                self._buckets[key] = bucket
                while len(self._buckets) > self._max_keys:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
                elapsed = max(0.0, now - bucket.updated)
                bucket.tokens = min(burst, bucket.tokens + elapsed * rate)
                bucket.updated = max(bucket.updated, now)
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return None
            return (1.0 - bucket.tokens) / rate

    def __len__(self) -> int:
        return len(self._buckets)
