"""The verified-token cache: until exp, revocation and key withdrawal re-checked on every hit, bounded."""

from __future__ import annotations

from joserfc.jwk import ECKey

from bastion.identity.principal import Principal
from bastion.oauth.contracts import VerificationKey
from bastion.oauth.token_cache import CachedToken, TokenCache


class Clock:
    def __init__(self, now: float = 1_900_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Keys:
    """A KeySet held in memory (like the built-in server's local key set)."""

    def __init__(self, *keys: VerificationKey) -> None:
        self.keys = {k.kid: k for k in keys}
        self.is_usable = True

    def get(self, kid: str) -> VerificationKey | None:
        return self.keys.get(kid) if self.is_usable else None

    async def refresh(self, kid: str) -> None:
        return None

    def usable(self) -> bool:
        return self.is_usable


class Revoked:
    def __init__(self) -> None:
        self.ids: set[str] = set()

    def is_revoked(self, jti: str) -> bool:
        return jti in self.ids


def principal(name: str = "app") -> Principal:
    return Principal(consumer_id=f"idp:{name}", consumer_name=name, credential_id="jti-1", credential_kind="jwt",
                     level=None, permissions=frozenset({"users:read"}), issuer="idp", client_id=name)


KEY = VerificationKey("k1", "ES256", ECKey.generate_key("P-256", private=False))


def test_hit_until_exp_then_gone() -> None:
    clock = Clock()
    cache = TokenCache(wall_clock=clock)
    who = principal()
    cache.put("token", CachedToken(who, clock.now + 60))
    assert cache.get("token") is who
    clock.now += 59.9
    assert cache.get("token") is who
    clock.now += 0.2
    assert cache.get("token") is None
    assert len(cache) == 0  # an expired entry is dropped, not kept
    assert cache.get("other") is None


def test_expired_tokens_are_not_stored() -> None:
    clock = Clock()
    cache = TokenCache(wall_clock=clock)
    cache.put("token", CachedToken(principal(), clock.now))
    assert len(cache) == 0


def test_revocation_is_checked_on_every_hit() -> None:
    clock = Clock()
    revoked = Revoked()
    cache = TokenCache(wall_clock=clock)
    cache.put("token", CachedToken(principal(), clock.now + 600, jti="jti-1", revocations=revoked))
    assert cache.get("token") is not None
    revoked.ids.add("jti-1")
    assert cache.get("token") is None
    revoked.ids.clear()
    assert cache.get("token") is None  # gone for good: the next request verifies again


def test_withdrawn_key_or_unusable_key_set_ends_the_entry() -> None:
    clock = Clock()
    keys = Keys(KEY)
    cache = TokenCache(wall_clock=clock)
    entry = CachedToken(principal(), clock.now + 600, keys=keys, kid="k1", key=KEY)
    cache.put("a", entry)
    cache.put("b", entry)
    assert cache.get("a") is not None
    keys.is_usable = False  # the IdP has been unreachable beyond the staleness bound: fail closed
    assert cache.get("a") is None
    keys.is_usable = True
    assert cache.get("b") is not None
    keys.keys["k1"] = VerificationKey("k1", "ES256", ECKey.generate_key("P-256", private=False))  # replaced
    assert cache.get("b") is None


def test_bounded_oldest_first() -> None:
    clock = Clock()
    cache = TokenCache(wall_clock=clock, max_entries=3)
    for name in ("t1", "t2", "t3"):
        cache.put(name, CachedToken(principal(name), clock.now + 60))
    cache.put("t2", CachedToken(principal("t2"), clock.now + 60))  # a refresh of an entry evicts nothing
    assert len(cache) == 3
    cache.put("t4", CachedToken(principal("t4"), clock.now + 60))
    assert len(cache) == 3
    assert cache.get("t1") is None
    assert all(cache.get(t) is not None for t in ("t2", "t3", "t4"))
    cache.discard("t2")
    assert cache.get("t2") is None
    cache.clear()
    assert len(cache) == 0


SIGNATURE = "s" * 86  # an ES256 signature's length in base64url


def test_a_hit_needs_the_whole_token_not_just_its_signature() -> None:
    clock = Clock()
    cache = TokenCache(wall_clock=clock)
    alice, mallory = principal("alice"), principal("mallory")
    cache.put(f"h.alice.{SIGNATURE}", CachedToken(alice, clock.now + 60))
    assert cache.get(f"h.alice.{SIGNATURE}") is alice
    assert cache.get(f"h.mallory.{SIGNATURE}") is None  # same signature segment, other payload: a miss
    assert cache.get(f"h.alice.{SIGNATURE}") is alice  # ... which leaves the real entry alone
    cache.discard(f"h.mallory.{SIGNATURE}")
    assert cache.get(f"h.alice.{SIGNATURE}") is alice
    cache.put(f"h.mallory.{SIGNATURE}", CachedToken(mallory, clock.now + 60))  # shares the slot: replaces it
    assert cache.get(f"h.mallory.{SIGNATURE}") is mallory
    assert cache.get(f"h.alice.{SIGNATURE}") is None
    assert len(cache) == 1


def test_tokens_with_a_short_last_segment_are_filed_whole() -> None:
    clock = Clock()
    cache = TokenCache(wall_clock=clock)
    first, second = principal("first"), principal("second")
    cache.put("opaque-1.v1", CachedToken(first, clock.now + 60))
    cache.put("opaque-2.v1", CachedToken(second, clock.now + 60))
    assert len(cache) == 2
    assert cache.get("opaque-1.v1") is first and cache.get("opaque-2.v1") is second
