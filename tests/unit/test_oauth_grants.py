"""Pure logic of the authorization server's grants: scope arithmetic, PKCE, grant types."""

from __future__ import annotations

import hashlib
from base64 import urlsafe_b64encode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.identity.principal import Principal
from bastion.oauth.server import pkce
from bastion.oauth.server.errors import OAuthError
from bastion.oauth.server.grants import grant_type_of
from bastion.oauth.server.scopes import covers, grant_scopes, intersect, parse_scope

# -- scopes ------------------------------------------------------------------------------------------


def test_parse_scope_splits_on_single_spaces_and_drops_repeats() -> None:
    assert parse_scope(None) == ()
    assert parse_scope("orders:read users:read orders:read") == ("orders:read", "users:read")


@pytest.mark.parametrize("value", ["orders:read  users:read", " orders:read", "orders:read ", 'a"b', "a\\b",
                                   "ordérs", "a\tb", " ".join(f"s{i}" for i in range(65))])
def test_parse_scope_refuses_malformed_values(value: str) -> None:
    with pytest.raises(OAuthError) as caught:
        parse_scope(value)
    assert caught.value.error == "invalid_scope"


@pytest.mark.parametrize(("grants", "scope", "expected"), [
    (["orders:read"], "orders:read", True),
    (["orders:read"], "orders:write", False),
    (["orders:*"], "orders:write", True),
    (["orders:*"], "orders:*", True),
    (["orders:*"], "ordersx:read", False),
    (["orders"], "orders:read", False),
    (["*"], "anything:at:all", True),
    ([], "orders:read", False),
])
def test_covers_reads_wildcards_like_principal_missing(grants: list[str], scope: str, expected: bool) -> None:
    principal = Principal("c", "c", "k", "jwt", None, frozenset(grants))
    assert covers(frozenset(grants), scope) is expected
    assert (not principal.missing(frozenset({scope}))) is expected


_SCOPES = st.sampled_from(["*", "orders:*", "orders:read", "orders:write", "users:*", "users:read", "admin",
                           "orders:read:own"])


@given(st.lists(_SCOPES, max_size=5), st.lists(_SCOPES, max_size=5), _SCOPES)
def test_intersection_grants_exactly_what_both_sides_grant(left: list[str], right: list[str], probe: str) -> None:
    """A concrete scope is within the intersection iff it is within both sides (for non-wildcard probes),
    and the intersection never grants what one side does not."""
    result = intersect(left, right)
    if covers(result, probe):
        assert covers(left, probe)
        assert covers(right, probe)
    if "*" not in probe and covers(left, probe) and covers(right, probe):
        assert covers(result, probe)


def test_intersect_keeps_the_narrower_side_and_drops_covered_entries() -> None:
    assert intersect(["orders:*"], ["orders:read", "users:read"]) == ("orders:read",)
    assert intersect(["orders:read", "users:*"], ["*"]) == ("orders:read", "users:*")
    assert intersect(["orders:*", "orders:read"], ["orders:*"]) == ("orders:*",)
    assert intersect(["orders:read"], ["users:read"]) == ()


def test_no_requested_scope_grants_the_clients_scopes_within_the_permissions() -> None:
    assert grant_scopes((), ["orders:read", "orders:write"], frozenset({"orders:read"})) == ("orders:read",)


def test_requested_scopes_the_consumer_lacks_are_left_out() -> None:
    assert grant_scopes(("orders:read", "orders:write"), ["orders:*"], frozenset({"orders:read"})) == (
        "orders:read",)


def test_a_scope_outside_the_clients_registration_is_invalid_scope() -> None:
    with pytest.raises(OAuthError) as caught:
        grant_scopes(("users:read",), ["orders:read"], frozenset({"*"}))
    assert caught.value.error == "invalid_scope"
    assert "users:read" in caught.value.description


def test_nothing_grantable_is_invalid_scope() -> None:
    with pytest.raises(OAuthError) as caught:
        grant_scopes((), ["orders:read"], frozenset({"users:read"}))
    assert caught.value.error == "invalid_scope"


# -- PKCE --------------------------------------------------------------------------------------------

# RFC 7636 appendix B.
RFC_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
RFC_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_s256_matches_the_rfc_example() -> None:
    assert pkce.s256(RFC_VERIFIER) == RFC_CHALLENGE
    assert pkce.verifier_matches(RFC_VERIFIER, RFC_CHALLENGE)
    assert not pkce.verifier_matches(RFC_VERIFIER[:-1] + "9", RFC_CHALLENGE)


@given(st.text(alphabet="ABCXYZabcxyz0189-._~", min_size=43, max_size=128))
def test_every_valid_verifier_matches_its_own_challenge(verifier: str) -> None:
    expected = urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    assert pkce.valid_verifier(verifier)
    assert pkce.valid_challenge(expected)
    assert pkce.verifier_matches(verifier, expected)


@pytest.mark.parametrize("verifier", ["a" * 42, "a" * 129, "a" * 42 + "+", "a" * 42 + "/", "a" * 42 + "=",
                                      "a" * 42 + " ", "a" * 42 + "é"])
def test_malformed_verifiers_are_refused_and_never_match(verifier: str) -> None:
    assert not pkce.valid_verifier(verifier)
    assert not pkce.verifier_matches(verifier, pkce.s256(verifier.encode("ascii", "replace").decode()))


@pytest.mark.parametrize("challenge", ["a" * 42, "a" * 44, "a" * 42 + "=", "a" * 42 + "+", RFC_VERIFIER + "x"])
def test_malformed_challenges_are_refused(challenge: str) -> None:
    assert not pkce.valid_challenge(challenge)


# -- grant types ------------------------------------------------------------------------------------


@pytest.mark.parametrize("grant_type", ["authorization_code", "client_credentials", "refresh_token"])
def test_supported_grant_types(grant_type: str) -> None:
    assert grant_type_of({"grant_type": grant_type}) == grant_type


@pytest.mark.parametrize("grant_type", ["password", "implicit", "urn:ietf:params:oauth:grant-type:device_code",
                                        "urn:ietf:params:oauth:grant-type:jwt-bearer", "CLIENT_CREDENTIALS"])
def test_other_grant_types_are_unsupported(grant_type: str) -> None:
    with pytest.raises(OAuthError) as caught:
        grant_type_of({"grant_type": grant_type})
    assert caught.value.error == "unsupported_grant_type"


def test_missing_grant_type_is_invalid_request() -> None:
    with pytest.raises(OAuthError) as caught:
        grant_type_of({})
    assert caught.value.error == "invalid_request"
