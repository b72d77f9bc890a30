"""canonical_path / encode_path: one decoding, no way around the root, and a stable round trip."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bastion.routing.path import InvalidPath, canonical_path, encode_path


@pytest.mark.parametrize(("raw", "expected"), [
    (b"/", "/"),
    (b"/v1/echo", "/v1/echo"),
    (b"/v1//echo", "/v1/echo"),
    (b"////v1///echo", "/v1/echo"),
    (b"//", "/"),
    (b"/v1/./echo", "/v1/echo"),
    (b"/./", "/"),
    (b"/.", "/"),
    (b"/v1/users/../echo", "/v1/echo"),
    (b"/a/b/..", "/a/"),
    (b"/a/b/.", "/a/b/"),
    (b"/a/..", "/"),
    (b"/users/", "/users/"),
    (b"/.../x", "/.../x"),
    (b"/..a/b..", "/..a/b.."),
    (b"/a/.b", "/a/.b"),
    (b"/v1/%65cho", "/v1/echo"),
    (b"/v1/%2e/echo", "/v1/echo"),
    (b"/v1/users/%2E%2e/echo", "/v1/echo"),
    (b"/v1/%252e%252e/echo", "/v1/%2e%2e/echo"),  # decoded once only
    (b"/v1%252Fecho", "/v1%2Fecho"),
    (b"/caf%C3%A9", "/café"),
    ("/café".encode(), "/café"),
    (b"/v1/echo;x=1", "/v1/echo;x=1"),
    (b"/a%20b", "/a b"),
    (b"/v1/echo%3Fx=1", "/v1/echo?x=1"),
    (b"/v1/echo%23top", "/v1/echo#top"),
])
def test_canonical_path(raw: bytes, expected: str) -> None:
    assert canonical_path(raw) == expected


@pytest.mark.parametrize("raw", [
    b"", b"v1/echo", b"*", b"http://x/",
    b"/..", b"/../v1", b"/a/../..", b"/v1/../../etc/passwd", b"/%2e%2e", b"/a/%2e%2e/%2E%2E/b",
    b"/v1%2Fecho", b"/v1%2fecho", b"/v1%5Cecho", b"/v1%5cecho", b"/v1/echo%00",
    b"/v1\\echo", b"/v1/\x00", b"/v1/ec\x01ho",
    b"/%zz", b"/%", b"/a%", b"/%2", b"/%g0",
    b"/%c0%af", b"/%ff", b"/\xff", b"/%e2%82", b"/%ed%a0%80",  # overlong, invalid, truncated, surrogate
    b"/%0d%0aX:%20y", b"/%09", b"/%7f", b"/%1b[0m",
])
def test_canonical_path_rejects(raw: bytes) -> None:
    with pytest.raises(InvalidPath):
        canonical_path(raw)


@pytest.mark.parametrize(("path", "expected"), [
    ("/v1/echo", "/v1/echo"),
    ("/v1/users/42", "/v1/users/42"),
    ("/a:b@c!$&'()*+,;=-._~", "/a:b@c!$&'()*+,;=-._~"),
    ("/café", "/caf%C3%A9"),
    ("/a b", "/a%20b"),
    ("/%2e%2e", "/%252e%252e"),  # a literal percent never becomes an escape upstream
    ("/v1/echo?x=1", "/v1/echo%3Fx=1"),  # a decoded '?' stays in the path
    ("/v1/echo#top", "/v1/echo%23top"),
    ("/a\"b<c>", "/a%22b%3Cc%3E"),
])
def test_encode_path(path: str, expected: str) -> None:
    assert encode_path(path) == expected
    assert canonical_path(encode_path(path).encode("ascii")) == path


# -- properties ------------------------------------------------------------------------------------
_TOKENS = ["/", "/", "/", ".", "..", "a", "b", "~", ";", "=", "%", "%2e", "%2E", "%2f", "%2F", "%5c", "%00",
           "%25", "%252e", "%65", "%3f", "%23", "%20", "%c3%a9", "%c0%af", "%ff", "%zz", "%0a", "\\", "\x00",
           "é", "?", "#", " ", ":", "@"]

paths = st.one_of(
    st.lists(st.sampled_from(_TOKENS), max_size=24).map(lambda parts: ("/" + "".join(parts)).encode()),
    st.binary(max_size=40).map(lambda raw: b"/" + raw),
    st.binary(max_size=40),
)


def _accepted(raw: bytes) -> str | None:
    try:
        return canonical_path(raw)
    except InvalidPath:
        return None  # the only exception it may raise


@settings(max_examples=1500)
@given(paths)
@example(b"/a/b/../..")
@example(b"/a/./../b/")
@example(b"/%2e%2e/")
@example(b"/x/%2e./y")
def test_canonical_path_properties(raw: bytes) -> None:
    path = _accepted(raw)
    if path is None:
        return
    assert path.startswith("/")
    assert "//" not in path
    assert "/../" not in path and not path.endswith("/..")
    assert "/./" not in path and not path.endswith("/.")
    assert "\\" not in path and "\x00" not in path
    assert not any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path)
    # Idempotent through the upstream encoding: the upstream resolves the very same path.
    encoded = encode_path(path)
    assert encoded.isascii()
    assert canonical_path(encoded.encode("ascii")) == path
    assert encode_path(canonical_path(encoded.encode("ascii"))) == encoded


@given(st.text(max_size=30))
def test_encode_path_output_is_a_plain_ascii_path(text: str) -> None:
    encoded = encode_path("/" + text)
    assert encoded.isascii()
    assert not any(ch in encoded for ch in " ?#\\\x00\r\n\t\"<>")
