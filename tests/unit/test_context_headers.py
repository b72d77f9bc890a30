"""Headers: the multi-map policies and the proxy share; set_all replaces every copy of each name at once."""

from __future__ import annotations

from bastion.pipeline.context import Headers


def test_set_all_replaces_every_copy_and_keeps_the_rest_in_order() -> None:
    headers = Headers([(b"ratelimit", b"old-1"), (b"content-type", b"text/plain"), (b"ratelimit", b"old-2"),
                       (b"etag", b'"v1"')])
    headers.set_all({"RateLimit": '"per-ip";r=9;t=1', "RateLimit-Policy": '"per-ip";q=10;w=1'})
    assert headers.items == [(b"content-type", b"text/plain"), (b"etag", b'"v1"'),
                             (b"ratelimit", b'"per-ip";r=9;t=1'), (b"ratelimit-policy", b'"per-ip";q=10;w=1')]


def test_set_all_without_present_copies_only_appends() -> None:
    items = [(b"content-type", b"application/json")]
    headers = Headers(items)
    headers.set_all({"X-Frame-Options": "DENY"})
    assert headers.items is items  # nothing to drop: the list is not rebuilt
    assert headers.items == [(b"content-type", b"application/json"), (b"x-frame-options", b"DENY")]


def test_set_all_matches_set_for_names_differing_in_case() -> None:
    one, other = Headers([(b"cache-control", b"public")]), Headers([(b"cache-control", b"public")])
    fields = {"Cache-Control": "no-store", "cache-control": "private"}
    one.set_all(fields)
    for name, value in fields.items():
        other.set(name, value)
    assert one.items == other.items == [(b"cache-control", b"private")]
