"""The hostile-request corpus: one row per request, what the gateway must answer, and whether it closes.

The gateway under test runs ``hardened_config`` (head 1 s, body 1.5 s, idle 2 s, 64 KiB bodies, and the
default 32 KiB head / 100 headers / 8 KiB target). Expected codes follow docs/errors.md: framing attacks
are ``http.ambiguous_framing`` unless llhttp rejects the bytes itself (``http.malformed``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tests.security.conftest import BODY_TIMEOUT, HEAD_TIMEOUT, HOST, MAX_BODY
from tests.security.rawclient import HALF_CLOSE, Send

CLOSE_WITHOUT_RESPONSE: Literal["close-without-response"] = "close-without-response"

AMBIGUOUS = "http.ambiguous_framing"
MALFORMED = "http.malformed"
HOST_INVALID = "http.host_invalid"
PATH_INVALID = "http.path_invalid"
TOO_LARGE = "http.headers_too_large"
TIMEOUT = "http.request_timeout"
VERSION = "http.version_unsupported"
UPGRADE = "http.upgrade_unsupported"
NOT_FOUND = "route.not_found"


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    send: Send
    """Bytes, or chunks with float pauses (and HALF_CLOSE) for slow clients."""
    expect: int | Literal["close-without-response"]
    close: bool
    """The server must close the connection after its response (else a second request must work)."""
    code: str | None = None
    """The problem ``code`` of a refusal."""
    upstream_path: str | None = None
    """For requests proxied to /v1/echo: the path the upstream must have seen."""
    upstream_query: str | None = None
    body_length: int | None = None
    """For requests proxied to /v1/echo: the body length the upstream must have received."""
    interim: tuple[int, ...] = ()
    within: float | None = None
    """The final answer (or the close) must come within this many seconds of connecting."""
    timeout: float = HEAD_TIMEOUT + 2.0


def get(target: bytes, *headers: bytes, version: bytes = b"HTTP/1.1", method: bytes = b"GET") -> bytes:
    """A request with a Host header first, then ``headers`` (complete lines without CRLF)."""
    lines = [method + b" " + target + b" " + version, b"Host: " + HOST, *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def raw(head: bytes, body: bytes = b"") -> bytes:
    """A request head given line by line with ``|`` for CRLF (readable tables); ``body`` appended as is."""
    return head.replace(b"|", b"\r\n") + b"\r\n\r\n" + body


def post(*headers: bytes, body: bytes = b"", target: bytes = b"/v1/echo", version: bytes = b"HTTP/1.1") -> bytes:
    lines = [b"POST " + target + b" " + version, b"Host: " + HOST, *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def chunked(*headers: bytes, body: bytes) -> bytes:
    return post(*headers, b"Transfer-Encoding: chunked", body=body)


SMUGGLED = b"GET /v1/echo?smuggled=1 HTTP/1.1\r\nHost: gw.test\r\n\r\n"
CHUNKED_HELLO = b"5\r\nhello\r\n0\r\n\r\n"


def _smuggling() -> list[Case]:
    c = "framing"
    return [
        Case("cl-te", c, post(b"Content-Length: 5", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"), 400, True,
             AMBIGUOUS),
        Case("te-cl", c, post(b"Transfer-Encoding: chunked", b"Content-Length: 5", body=b"0\r\n\r\n"), 400, True,
             AMBIGUOUS),
        Case("cl-te-smuggled-request", c,
             post(b"Content-Length: %d" % (5 + len(SMUGGLED)), b"Transfer-Encoding: chunked",
                  body=b"0\r\n\r\n" + SMUGGLED), 400, True, AMBIGUOUS),
        Case("te-cl-smuggled-request", c,
             post(b"Transfer-Encoding: chunked", b"Content-Length: 4",
                  body=b"%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n"), 400, True, AMBIGUOUS),
        Case("te-te-obfuscated-smuggled-request", c,
             post(b"Transfer-Encoding: chunked", b"Transfer-encoding: x", b"Content-Length: 4",
                  body=b"0\r\n\r\n" + SMUGGLED), 400, True, AMBIGUOUS),
        Case("te-obs-fold", c, post(b"Transfer-Encoding:", b" chunked", body=b"0\r\n\r\n"), 400, True, MALFORMED),
        Case("te-obs-fold-with-cl", c, post(b"Content-Length: 5", b"Transfer-Encoding: x", b" chunked",
                                            body=b"hello"), 400, True, AMBIGUOUS),
        Case("cl-duplicate-equal", c, post(b"Content-Length: 5", b"Content-Length: 5", body=b"hello"), 400, True,
             AMBIGUOUS),
        Case("cl-duplicate-differing", c, post(b"Content-Length: 5", b"Content-Length: 6", body=b"hello!"), 400,
             True, AMBIGUOUS),
        Case("cl-list", c, post(b"Content-Length: 5, 5", body=b"hello"), 400, True, AMBIGUOUS),
        Case("cl-plus-sign", c, post(b"Content-Length: +5", body=b"hello"), 400, True, AMBIGUOUS),
        Case("cl-negative", c, post(b"Content-Length: -1", body=b"hello"), 400, True, AMBIGUOUS),
        Case("cl-hex", c, post(b"Content-Length: 0x5", body=b"hello"), 400, True, AMBIGUOUS),
        Case("cl-overflow", c, post(b"Content-Length: 99999999999999999999", body=b"hello"), 400, True,
             AMBIGUOUS),
        Case("cl-empty", c, post(b"Content-Length: ", body=b"hello"), 400, True, AMBIGUOUS),
        Case("cl-trailing-garbage", c, post(b"Content-Length: 5 x", body=b"hello"), 400, True, AMBIGUOUS),
        Case("cl-vertical-tab", c, post(b"Content-Length: 5\x0b", body=b"hello"), 400, True, AMBIGUOUS),
        # Leading OWS is part of the field syntax (RFC 9110 5.6.3), not a second number: accepted.
        Case("cl-leading-whitespace", c, post(b"Content-Length:   5", body=b"hello"), 200, False,
             upstream_path="/v1/echo", body_length=5),
        Case("te-twice", c, post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked",
                                 body=CHUNKED_HELLO), 400, True, AMBIGUOUS),
        Case("te-xchunked", c, post(b"Transfer-Encoding: xchunked", body=CHUNKED_HELLO), 400, True, AMBIGUOUS),
        Case("te-chunked-identity", c, post(b"Transfer-Encoding: chunked, identity", body=CHUNKED_HELLO), 400,
             True, AMBIGUOUS),
        Case("te-identity", c, post(b"Transfer-Encoding: identity", body=b"hello"), 400, True, AMBIGUOUS),
        Case("te-gzip-chunked", c, post(b"Transfer-Encoding: gzip, chunked", body=CHUNKED_HELLO), 400, True,
             AMBIGUOUS),
        Case("te-chunked-twice-in-list", c, post(b"Transfer-Encoding: chunked, chunked", body=CHUNKED_HELLO),
             400, True, AMBIGUOUS),
        Case("te-empty", c, post(b"Transfer-Encoding: ", body=CHUNKED_HELLO), 400, True, AMBIGUOUS),
        # Transfer codings are case-insensitive (RFC 9112 7): "Chunked" is chunked.
        Case("te-capitalised", c, post(b"Transfer-Encoding: Chunked", body=CHUNKED_HELLO), 200, False,
             upstream_path="/v1/echo", body_length=5),
        Case("te-in-http10", c, post(b"Transfer-Encoding: chunked", body=CHUNKED_HELLO, version=b"HTTP/1.0"),
             400, True, AMBIGUOUS),
        Case("cl-te-with-trailing-whitespace", c, post(b"Content-Length: 5", b"Transfer-Encoding: chunked \t",
                                                       body=b"0\r\n\r\n"), 400, True, AMBIGUOUS),
        # Trailing OWS is not part of the value: a lone "chunked " is plain chunked framing.
        Case("te-trailing-whitespace-alone", c, post(b"Transfer-Encoding: chunked ", body=CHUNKED_HELLO), 200,
             False, upstream_path="/v1/echo", body_length=5),
        Case("chunk-size-not-hex", c, chunked(body=b"zz\r\nhello\r\n0\r\n\r\n"), 400, True, MALFORMED),
        Case("chunk-size-0x-prefix", c, chunked(body=b"0x5\r\nhello\r\n0\r\n\r\n"), 400, True, MALFORMED),
        Case("chunk-size-leading-space", c, chunked(body=b" 5\r\nhello\r\n0\r\n\r\n"), 400, True, MALFORMED),
        Case("chunk-size-trailing-space", c, chunked(body=b"5 \r\nhello\r\n0\r\n\r\n"), 400, True, MALFORMED),
        Case("chunk-size-negative", c, chunked(body=b"-5\r\nhello\r\n0\r\n\r\n"), 400, True, MALFORMED),
        Case("chunk-size-overflow", c, chunked(body=b"ffffffffffffffffff1\r\nhello\r\n0\r\n\r\n"), 400, True,
             MALFORMED),
        Case("chunk-data-longer-than-size", c, chunked(body=b"3\r\nhello\r\n0\r\n\r\n"), 400, True, MALFORMED),
        Case("chunk-missing-crlf", c, chunked(body=b"5\r\nhello0\r\n\r\n"), 400, True, MALFORMED),
        Case("chunk-bare-lf", c, chunked(body=b"5\nhello\n0\n\n"), 400, True, MALFORMED),
        # Chunk extensions are legal (RFC 9112 7.1.1) and ignored; trailers likewise.
        Case("chunk-extension", c, chunked(body=b"5;name=value\r\nhello\r\n0\r\n\r\n"), 200, False,
             upstream_path="/v1/echo", body_length=5),
        Case("chunk-extension-quoted", c, chunked(body=b'5;name="a b"\r\nhello\r\n0;last\r\n\r\n'), 200, False,
             upstream_path="/v1/echo", body_length=5),
        Case("chunk-trailer", c, chunked(body=b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"), 200, False,
             upstream_path="/v1/echo", body_length=5),
        # A body that looks like a request is only ever a body.
        Case("body-looks-like-request", c, post(b"Content-Length: %d" % len(SMUGGLED), body=SMUGGLED), 200, False,
             upstream_path="/v1/echo", body_length=len(SMUGGLED)),
    ]


def _host() -> list[Case]:
    c = "host"
    return [
        Case("host-missing-http11", c, raw(b"GET /v1/echo HTTP/1.1"), 400, True, HOST_INVALID),
        Case("host-missing-http10", c, raw(b"GET /v1/echo HTTP/1.0"), 400, True, HOST_INVALID),
        Case("host-http10-present", c, get(b"/v1/echo", version=b"HTTP/1.0"), 200, True, upstream_path="/v1/echo"),
        Case("host-twice", c, get(b"/v1/echo", b"Host: other.test"), 400, True, HOST_INVALID),
        Case("host-twice-equal", c, get(b"/v1/echo", b"Host: " + HOST), 400, True, HOST_INVALID),
        Case("host-invalid-chars", c, raw(b"GET /v1/echo HTTP/1.1|Host: ex<ample>.test"), 400, True, HOST_INVALID),
        Case("host-with-path", c, raw(b"GET /v1/echo HTTP/1.1|Host: gw.test/evil"), 400, True, HOST_INVALID),
        Case("host-userinfo", c, raw(b"GET /v1/echo HTTP/1.1|Host: a@b"), 400, True, HOST_INVALID),
        Case("host-empty", c, raw(b"GET /v1/echo HTTP/1.1|Host: "), 400, True, HOST_INVALID),
        Case("host-inner-space", c, raw(b"GET /v1/echo HTTP/1.1|Host: gw test"), 400, True, HOST_INVALID),
        Case("host-port-too-long", c, raw(b"GET /v1/echo HTTP/1.1|Host: gw.test:99999999"), 400, True,
             HOST_INVALID),
        Case("host-port-empty", c, raw(b"GET /v1/echo HTTP/1.1|Host: gw.test:"), 400, True, HOST_INVALID),
        Case("host-with-port", c, raw(b"GET /v1/echo HTTP/1.1|Host: gw.test:8080"), 200, False,
             upstream_path="/v1/echo"),
        Case("host-ipv6-literal", c, raw(b"GET /v1/echo HTTP/1.1|Host: [::1]:8080"), 200, False,
             upstream_path="/v1/echo"),
        Case("absolute-form-other-authority", c, get(b"http://evil.test/v1/echo"), 400, True, HOST_INVALID),
        Case("absolute-form-same-authority", c, get(b"http://gw.test/v1/echo?a=1"), 200, False,
             upstream_path="/v1/echo", upstream_query="a=1"),
        Case("absolute-form-authority-case", c, get(b"HTTP://GW.TEST/v1/echo"), 200, False,
             upstream_path="/v1/echo"),
        Case("absolute-form-userinfo", c, get(b"http://user@gw.test/v1/echo"), 400, True, HOST_INVALID),
        Case("absolute-form-other-scheme", c, get(b"ftp://gw.test/v1/echo"), 400, True, PATH_INVALID),
        Case("absolute-form-fragment", c, get(b"http://gw.test/v1/echo#frag"), 400, True, PATH_INVALID),
        # The asterisk form names the server itself; the gateway routes paths only.
        Case("options-asterisk", c, get(b"*", method=b"OPTIONS"), 400, True, PATH_INVALID),
        Case("connect-authority-form", c, raw(b"CONNECT gw.test:443 HTTP/1.1|Host: gw.test:443"), 501, True,
             UPGRADE),
        Case("upgrade-websocket", c, get(b"/v1/echo", b"Upgrade: websocket", b"Connection: Upgrade",
                                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                                         b"Sec-WebSocket-Version: 13"), 501, True, UPGRADE),
        Case("upgrade-h2c", c, get(b"/v1/echo", b"Upgrade: h2c", b"Connection: Upgrade, HTTP2-Settings",
                                   b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"), 501, True, UPGRADE),
        # Without "Connection: upgrade" the Upgrade field is only informational (and hop-by-hop).
        Case("upgrade-without-connection-token", c, get(b"/v1/echo", b"Upgrade: websocket"), 200, False,
             upstream_path="/v1/echo"),
        Case("http2-prior-knowledge-preface", c, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, True, MALFORMED),
    ]


def _request_line() -> list[Case]:
    c = "request-line"
    return [
        Case("method-invalid-char", c, get(b"/v1/echo", method=b"G(T"), 400, True, MALFORMED),
        Case("method-lowercase", c, get(b"/v1/echo", method=b"get"), 400, True, MALFORMED),
        Case("method-unknown", c, get(b"/v1/echo", method=b"FOO"), 400, True, MALFORMED),
        Case("method-very-long", c, get(b"/v1/echo", method=b"G" * 5000), 400, True, MALFORMED),
        Case("method-undeclared-trace", c, get(b"/v1/echo", method=b"TRACE"), 405, False,
             "route.method_not_allowed"),
        Case("version-http2", c, get(b"/v1/echo", version=b"HTTP/2.0"), 505, True, VERSION),
        Case("version-http3", c, get(b"/v1/echo", version=b"HTTP/3.0"), 505, True, VERSION),
        Case("version-http12", c, get(b"/v1/echo", version=b"HTTP/1.2"), 505, True, VERSION),
        Case("version-http09-style", c, b"GET /\r\n\r\n", 505, True, VERSION),
        Case("version-missing", c, raw(b"GET /v1/echo|Host: gw.test"), 505, True, VERSION),
        Case("version-lowercase", c, get(b"/v1/echo", version=b"http/1.1"), 400, True, MALFORMED),
        Case("version-leading-zero", c, get(b"/v1/echo", version=b"HTTP/01.1"), 400, True, MALFORMED),
        Case("version-trailing-junk", c, get(b"/v1/echo", version=b"HTTP/1.1x"), 400, True, MALFORMED),
        Case("version-trailing-space", c, get(b"/v1/echo", version=b"HTTP/1.1 "), 400, True, MALFORMED),
        Case("request-line-bare-lf", c, b"GET /v1/echo HTTP/1.1\nHost: gw.test\n\n", 400, True, MALFORMED),
        Case("request-line-bare-cr", c, b"GET /v1/echo HTTP/1.1\rHost: gw.test\r\n\r\n", 400, True, MALFORMED),
        # llhttp skips repeated SP between the request-line parts; the gateway writes its own request line
        # upstream, so the leniency cannot desynchronise anything.
        Case("extra-space-before-target", c, raw(b"GET  /v1/echo HTTP/1.1|Host: gw.test"), 200, False,
             upstream_path="/v1/echo"),
        Case("extra-space-before-version", c, raw(b"GET /v1/echo  HTTP/1.1|Host: gw.test"), 200, False,
             upstream_path="/v1/echo"),
        Case("tab-as-separator", c, raw(b"GET\t/v1/echo HTTP/1.1|Host: gw.test"), 400, True, MALFORMED),
        Case("target-nul", c, get(b"/v1/ec\x00ho"), 400, True, MALFORMED),
        Case("target-raw-space", c, get(b"/v1/ec ho"), 400, True, MALFORMED),
        Case("target-control-char", c, get(b"/v1/ec\x01ho"), 400, True, MALFORMED),
        Case("target-del", c, get(b"/v1/ec\x7fho"), 400, True, MALFORMED),
        Case("target-tab", c, get(b"/v1/ec\tho"), 400, True, MALFORMED),
        Case("target-raw-utf8", c, get("/v1/écho".encode()), 400, True, MALFORMED),
        Case("target-raw-high-bytes", c, get(b"/v1/\xff\xfe"), 400, True, MALFORMED),
        # RFC 9112 2.2: a server SHOULD ignore an empty line received before the request line.
        Case("leading-empty-line", c, b"\r\n" + get(b"/v1/echo"), 200, False, upstream_path="/v1/echo"),
        Case("tls-client-hello-on-plain-port", c, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
             400, True, MALFORMED),
        Case("only-empty-lines", c, b"\r\n\r\n\r\n", 408, True, TIMEOUT, within=HEAD_TIMEOUT + 1.0),
    ]


def _headers() -> list[Case]:
    c = "headers"
    many = [b"X-Field-%d: v" % i for i in range(100)]  # with Host: 101 fields
    return [
        Case("header-name-nul", c, get(b"/v1/echo", b"X-A\x00b: c"), 400, True, MALFORMED),
        Case("header-value-nul", c, get(b"/v1/echo", b"X-A: c\x00d"), 400, True, MALFORMED),
        Case("header-value-bare-cr", c, get(b"/v1/echo", b"X-A: c\rd"), 400, True, MALFORMED),
        Case("header-value-control-char", c, get(b"/v1/echo", b"X-A: c\x01d"), 400, True, MALFORMED),
        Case("header-value-del", c, get(b"/v1/echo", b"X-A: c\x7fd"), 400, True, MALFORMED),
        Case("header-obs-fold", c, get(b"/v1/echo", b"X-A: b", b" folded"), 400, True, MALFORMED),
        Case("header-obs-fold-tab", c, get(b"/v1/echo", b"X-A: b", b"\tfolded"), 400, True, MALFORMED),
        Case("header-without-colon", c, get(b"/v1/echo", b"X-No-Colon"), 400, True, MALFORMED),
        Case("header-space-before-colon", c, raw(b"GET /v1/echo HTTP/1.1|Host : gw.test"), 400, True, MALFORMED),
        Case("header-underscore-in-name", c, get(b"/v1/echo", b"X_Forwarded_For: 10.0.0.1"), 400, True,
             MALFORMED),
        # Field names are remembered once lowered: a refused name must be refused again, in any case.
        Case("header-underscore-in-name-again", c, get(b"/v1/echo", b"X_Forwarded_For: 10.0.0.2"), 400, True,
             MALFORMED),
        Case("header-underscore-in-name-upper", c, get(b"/v1/echo", b"X_FORWARDED_FOR: 10.0.0.3"), 400, True,
             MALFORMED),
        Case("header-framing-name-in-capitals", c,
             get(b"/v1/echo", b"CONTENT-LENGTH: 1", b"Content-Length: 2"), 400, True, AMBIGUOUS),
        Case("header-empty-name", c, get(b"/v1/echo", b": value"), 400, True, MALFORMED),
        Case("header-name-separator-char", c, get(b"/v1/echo", b"X(A): v"), 400, True, MALFORMED),
        Case("header-bare-lf-between-fields", c, b"GET /v1/echo HTTP/1.1\r\nHost: gw.test\nX-A: b\r\n\r\n", 400,
             True, MALFORMED),
        # obs-text (0x80-0xFF) is legal in a field value.
        Case("header-value-obs-text", c, get(b"/v1/echo", b"X-A: caf\xe9"), 200, False, upstream_path="/v1/echo"),
        Case("headers-100-fields", c, get(b"/v1/echo", *many[:99]), 200, False, upstream_path="/v1/echo"),
        Case("headers-101-fields", c, get(b"/v1/echo", *many), 431, True, TOO_LARGE),
        Case("headers-40-kib", c, get(b"/v1/echo", *(b"X-Field-%d: %s" % (i, b"v" * 1000) for i in range(40))),
             431, True, TOO_LARGE),
        Case("header-one-33-kib", c, get(b"/v1/echo", b"X-Big: " + b"v" * (33 * 1024)), 431, True, TOO_LARGE),
        Case("headers-over-limit-sent-slowly", c,
             (b"GET /v1/echo HTTP/1.1\r\nHost: gw.test\r\n",
              *(part for i in range(60) for part in (0.01, b"X-Slow-%02d: %s\r\n" % (i, b"v" * 1000)))),
             431, True, TOO_LARGE, within=HEAD_TIMEOUT + 1.0),
    ]


def _uri() -> list[Case]:
    c = "uri"
    at_limit = b"/v1/" + b"a" * (8192 - 4)
    return [
        Case("target-9-kib", c, get(b"/v1/echo?q=" + b"a" * 9216), 414, True, "http.uri_too_long"),
        Case("target-at-limit", c, get(at_limit), 404, False, NOT_FOUND),
        Case("target-limit-plus-one", c, get(at_limit + b"a"), 414, True, "http.uri_too_long"),
        Case("target-just-under-limit", c, get(b"/v1/" + b"a" * 8000), 404, False, NOT_FOUND),
    ]


def _paths() -> list[Case]:
    c = "path"

    def ok(target: bytes, seen: str = "/v1/echo", case_id: str = "") -> Case:
        return Case(case_id, c, get(target), 200, False, upstream_path=seen)

    def bad(case_id: str, target: bytes) -> Case:
        return Case(case_id, c, get(target), 400, False, PATH_INVALID)

    def missing(case_id: str, target: bytes) -> Case:
        return Case(case_id, c, get(target), 404, False, NOT_FOUND)

    return [
        bad("encoded-slash-upper", b"/v1%2Fecho"),
        bad("encoded-slash-lower", b"/v1%2fecho"),
        bad("encoded-backslash", b"/v1%5Cecho"),
        bad("encoded-nul", b"/v1/echo%00"),
        bad("raw-backslash", b"/v1\\echo"),
        bad("dotdot-escapes-root", b"/../v1/echo"),
        bad("dotdot-escapes-root-deep", b"/v1/../../etc/passwd"),
        bad("encoded-dotdot-escapes-root", b"/v1/%2e%2e/%2E%2E/etc"),
        bad("invalid-percent", b"/v1/%zzecho"),
        bad("percent-at-end", b"/v1/echo%"),
        bad("percent-one-digit", b"/v1/echo%2"),
        bad("overlong-utf8-slash", b"/v1/%c0%afecho"),
        bad("invalid-utf8", b"/v1/%ff"),
        bad("encoded-crlf", b"/v1/echo%0d%0aX-Injected:%20yes"),
        Case("fragment", c, get(b"/v1/echo#fragment"), 400, True, PATH_INVALID),
        Case("asterisk-with-get", c, get(b"*"), 400, True, PATH_INVALID),
        ok(b"/v1/users/../echo", case_id="dotdot-resolved"),
        ok(b"/v1/users/%2e%2e/echo", case_id="encoded-dotdot-resolved"),
        ok(b"/v1//echo", case_id="double-slash-merged"),
        ok(b"////v1///echo", case_id="slash-runs-merged"),
        ok(b"/v1/./echo", case_id="dot-segment-dropped"),
        ok(b"/v1/%2e/echo", case_id="encoded-dot-segment-dropped"),
        ok(b"/v1/%65cho", case_id="percent-decoded-once"),
        ok(b"/v1/echo?", case_id="empty-query"),
        Case("query-keeps-encoded-slash", c, get(b"/v1/echo?a=%2F&b=..%2f"), 200, False, upstream_path="/v1/echo",
             upstream_query="a=%2F&b=..%2f"),
        missing("double-encoding-not-decoded-twice", b"/v1/%252e%252e/echo"),
        missing("double-encoded-slash-stays-literal", b"/v1%252Fecho"),
        missing("semicolon-path-parameter", b"/v1/echo;x=1"),
        missing("trailing-slash-is-distinct", b"/v1/echo/"),
        missing("trailing-dotdot-keeps-slash", b"/v1/echo/x/.."),
        missing("path-is-case-sensitive", b"/V1/ECHO"),
    ]


def _limits() -> list[Case]:
    c = "limits"
    return [
        # Refused on the declared length alone: the body is never sent.
        Case("body-content-length-over-limit", c, post(b"Content-Length: %d" % (MAX_BODY + 1)), 413, True,
             "http.body_too_large", within=1.0),
        Case("body-content-length-huge", c, post(b"Content-Length: 9999999999999"), 413, True,
             "http.body_too_large", within=1.0),
        Case("body-chunked-grows-over-limit", c,
             chunked(body=b"".join(b"4000\r\n" + b"a" * 0x4000 + b"\r\n" for _ in range(5))), 413, True,
             "http.body_too_large"),
        Case("body-at-limit", c, post(b"Content-Length: %d" % MAX_BODY, body=b"a" * MAX_BODY), 200, False,
             upstream_path="/v1/echo", body_length=MAX_BODY),
        Case("expect-100-continue", c,
             (post(b"Content-Length: 5", b"Expect: 100-continue"), 0.3, b"hello"), 200, False,
             upstream_path="/v1/echo", body_length=5, interim=(100,)),
        # Refused before the client is invited to send the body: no 100 Continue.
        Case("expect-100-continue-over-limit", c,
             post(b"Content-Length: %d" % (MAX_BODY + 1), b"Expect: 100-continue"), 413, True,
             "http.body_too_large"),
        Case("expect-other", c, post(b"Content-Length: 5", b"Expect: something-else", body=b"hello"), 417, True,
             "http.expectation_failed"),
        Case("expect-100-continue-http10-ignored", c,
             post(b"Content-Length: 5", b"Expect: 100-continue", body=b"hello", version=b"HTTP/1.0"), 200, True,
             upstream_path="/v1/echo", body_length=5),
        Case("get-with-body", c, get(b"/v1/echo", b"Content-Length: 5") + b"hello", 200, False,
             upstream_path="/v1/echo", body_length=5),
        Case("post-empty-body", c, post(b"Content-Length: 0"), 200, False, upstream_path="/v1/echo", body_length=0),
        Case("head-request", c, get(b"/v1/echo", method=b"HEAD"), 200, False),
    ]


def _slow_clients() -> list[Case]:
    c = "slow-client"
    head_deadline = HEAD_TIMEOUT + 1.0
    body_deadline = BODY_TIMEOUT + 1.0
    slow_headers = [part for i in range(30) for part in (0.3, b"X-Slow-%d: 1\r\n" % i)]
    trickle = [part for _ in range(30) for part in (0.3, b"a")]
    return [
        Case("sends-nothing", c, b"", 408, True, TIMEOUT, within=head_deadline),
        Case("partial-request-line", c, b"GET /v1/ec", 408, True, TIMEOUT, within=head_deadline),
        Case("request-line-then-silence", c, b"GET /v1/echo HTTP/1.1\r\n", 408, True, TIMEOUT,
             within=head_deadline),
        Case("slowloris-header-every-300ms", c, (b"GET /v1/echo HTTP/1.1\r\nHost: gw.test\r\n", *slow_headers), 408,
             True, TIMEOUT, within=head_deadline),
        Case("slow-request-line-byte-by-byte", c,
             tuple(part for byte in b"GET /v1/echo HTTP/1.1\r\n" for part in (0.1, bytes((byte,)))), 408, True,
             TIMEOUT, within=head_deadline),
        Case("body-trickle-byte-every-300ms", c, (post(b"Content-Length: 50"), *trickle), 408, True, TIMEOUT,
             within=body_deadline, timeout=BODY_TIMEOUT + 2.0),
        Case("body-stalls-half-way", c, post(b"Content-Length: 10", body=b"hello"), 408, True, TIMEOUT,
             within=body_deadline, timeout=BODY_TIMEOUT + 2.0),
        Case("chunked-body-stalls", c, chunked(body=b"5\r\nhello\r\n"), 408, True, TIMEOUT, within=body_deadline,
             timeout=BODY_TIMEOUT + 2.0),
        # A FIN: nothing pending is answered; a complete request still is, then the connection closes.
        Case("half-close-without-request", c, (HALF_CLOSE,), CLOSE_WITHOUT_RESPONSE, True, within=1.0),
        Case("half-close-after-partial-head", c, (b"GET /v1/echo HTTP/1.1\r\nHost: gw", HALF_CLOSE),
             CLOSE_WITHOUT_RESPONSE, True, within=1.0),
        Case("half-close-after-partial-body", c, (post(b"Content-Length: 10", body=b"hello"), HALF_CLOSE),
             CLOSE_WITHOUT_RESPONSE, True, within=1.0),
        Case("half-close-after-request", c, (get(b"/v1/echo"), HALF_CLOSE), 200, True, upstream_path="/v1/echo"),
    ]


CORPUS: list[Case] = [*_smuggling(), *_host(), *_request_line(), *_headers(), *_uri(), *_paths(), *_limits(),
                      *_slow_clients()]
