from __future__ import annotations

import pytest

from bastion.routing.router import Match, MethodNotAllowed, Router, RouteSpec, TemplateError


def spec(path: str, *methods: str, hosts: tuple[str, ...] = (), target: str | None = None) -> RouteSpec[str]:
    return RouteSpec(path, frozenset(methods or ("GET",)), target or f"{','.join(methods)} {path}", hosts)


def test_literal_beats_parameter_beats_glob() -> None:
    router = Router([spec("/users/{id}", target="param"), spec("/users/me", target="literal"),
                     spec("/users/**", target="glob")])
    assert router.match("h", "GET", "/users/me") == Match("literal", {}, "/users/me")
    assert router.match("h", "GET", "/users/42") == Match("param", {"id": "42"}, "/users/{id}")
    found = router.match("h", "GET", "/users/42/orders/7")
    assert isinstance(found, Match) and found.target == "glob"


def test_backtracks_when_literal_branch_dead_ends() -> None:
    router = Router([spec("/a/b/c", target="abc"), spec("/a/{x}/d", target="axd")])
    found = router.match("h", "GET", "/a/b/d")
    assert isinstance(found, Match) and found.target == "axd" and found.params == {"x": "b"}


def test_parameter_never_matches_empty_segment_and_trailing_slash_is_distinct() -> None:
    router = Router([spec("/users/{id}"), spec("/users")])
    assert router.match("h", "GET", "/users/") is None
    assert isinstance(router.match("h", "GET", "/users"), Match)


def test_method_not_allowed_lists_methods_and_head_follows_get() -> None:
    router = Router([spec("/orders", "GET"), spec("/orders", "POST")])
    assert router.match("h", "DELETE", "/orders") == MethodNotAllowed(("GET", "HEAD", "POST"))
    found = router.match("h", "HEAD", "/orders")
    assert isinstance(found, Match) and found.target == "GET /orders"


def test_unknown_path_is_none() -> None:
    router = Router([spec("/v1/users")])
    for path in ("/", "/v1", "/v1/users/1", "/v2/users", "/V1/users"):
        assert router.match("h", "GET", path) is None


def test_hosts_exact_wildcard_and_fallback() -> None:
    router = Router([spec("/x", hosts=("api.example.com",), target="exact"),
                     spec("/x", hosts=("*.example.com",), target="wild"),
                     spec("/x", hosts=("*.eu.example.com",), target="wild-eu"),
                     spec("/y", target="any")])
    assert router.match("api.example.com", "GET", "/x").target == "exact"  # type: ignore[union-attr]
    assert router.match("a.example.com", "GET", "/x").target == "wild"  # type: ignore[union-attr]
    assert router.match("a.eu.example.com", "GET", "/x").target == "wild-eu"  # type: ignore[union-attr]
    assert router.match("example.com", "GET", "/x") is None
    assert router.match("other.org", "GET", "/x") is None
    assert router.match("api.example.com", "GET", "/y").target == "any"  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", ["users", "/a/**/b", "/a/{b", "/a/{}", "/a//b", "/a/{b}c"])
def test_bad_templates_are_refused(bad: str) -> None:
    with pytest.raises(TemplateError):
        Router([spec(bad)])


def test_duplicate_method_is_refused() -> None:
    with pytest.raises(TemplateError):
        Router([spec("/a", "GET"), spec("/a", "GET")])
