"""Token buckets per user and per client address → 429 with Retry-After."""

from __future__ import annotations

from hsmvault.host.gateway import DevTokenIssuer, RateLimit
from hsmvault.host.gateway.ratelimit import TokenBuckets

from .conftest import AppFactory, FakeClock, bearer, client_for


def test_bucket_allows_a_burst_then_refills_at_the_rate(clock: FakeClock) -> None:
    buckets = TokenBuckets(RateLimit(rate=2.0, burst=3), clock=clock)
    assert [buckets.take("k") for _ in range(3)] == [None, None, None]
    assert buckets.take("k") == 0.5
    clock.advance(0.5)
    assert buckets.take("k") is None
    assert buckets.take("other") is None  # keys are independent


def test_clock_going_backwards_adds_no_tokens(clock: FakeClock) -> None:
    buckets = TokenBuckets(RateLimit(rate=1.0, burst=1), clock=clock)
    assert buckets.take("k") is None
    clock.advance(-1000)
    assert buckets.take("k") is not None
    clock.advance(1000)
    assert buckets.take("k") is not None  # still no refill: time only moved back to now
    clock.advance(1)
    assert buckets.take("k") is None


def test_bucket_memory_is_bounded(clock: FakeClock) -> None:
    buckets = TokenBuckets(RateLimit(1.0, 1), clock=clock, max_keys=10)
    for i in range(100):
        buckets.take(i)
    assert len(buckets) == 10


def test_per_user_limit_gives_429_with_retry_after(
    make_app: AppFactory, issuer: DevTokenIssuer, clock: FakeClock
) -> None:
    client = client_for(make_app(user_rate=RateLimit(rate=0.5, burst=2)))
    alice, bob = bearer(issuer.mint("alice")), bearer(issuer.mint("bob"))
    assert client.get("/v1/backups", headers=alice).status_code == 200
    assert client.get("/v1/backups", headers=alice).status_code == 200
    limited = client.get("/v1/backups", headers=alice)
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "2"
    assert limited.json()["error"] == "rate_limited"
    assert client.get("/v1/backups", headers=bob).status_code == 200  # another user
    clock.advance(2)
    assert client.get("/v1/backups", headers=alice).status_code == 200


def test_per_address_limit_applies_before_authentication(
    make_app: AppFactory, issuer: DevTokenIssuer, clock: FakeClock
) -> None:
    app = make_app(address_rate=RateLimit(rate=0.1, burst=3))
    mallory = client_for(app, "192.0.2.7")
    for _ in range(3):
        assert mallory.get("/v1/backups", headers=bearer("not-a-token")).status_code == 401
    limited = mallory.get("/v1/backups", headers=bearer(issuer.mint("mallory")))
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) == 10
    assert mallory.get("/v1/fleet").status_code == 429
    assert mallory.get("/v1/health").status_code == 200  # liveness is never limited
    other = client_for(app, "192.0.2.8")
    assert other.get("/v1/backups", headers=bearer(issuer.mint("alice"))).status_code == 200
