"""Request parameters of the OAuth endpoints, parsed strictly.

RFC 6749 section 3.1: a parameter sent twice is an error (``invalid_request``), and a parameter sent without a
value is treated as omitted. Bodies are ``application/x-www-form-urlencoded`` UTF-8 only, and bounded.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect, Request

from bastion.oauth.server.errors import INVALID_REQUEST, OAuthError

MAX_FORM_BYTES = 16 * 1024  # an OAuth request is a handful of short parameters
MAX_PARAMETERS = 32
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


def parse_parameters(encoded: str) -> dict[str, str]:
    """Form/query encoding to a dict: duplicates refused, empty values dropped, malformed input refused."""
    try:
        pairs = parse_qsl(encoded, keep_blank_values=True, strict_parsing=True, errors="strict",
                          max_num_fields=MAX_PARAMETERS)
    except UnicodeDecodeError:
        raise OAuthError(INVALID_REQUEST, "Parameters must be UTF-8.") from None
    except ValueError:
        raise OAuthError(INVALID_REQUEST, "The parameters are malformed or too many.") from None
    params: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in pairs:
        if name in seen:
            # The name is echoed only when it is a plain token: it comes from the client.
            shown = name if name.isascii() and name.replace("_", "").isalnum() and len(name) <= 40 else "a parameter"
            raise OAuthError(INVALID_REQUEST, f"Duplicate parameter: {shown}.")
        seen.add(name)
        if value:
            params[name] = value
    return params


def is_form(content_type: str | None) -> bool:
    """``application/x-www-form-urlencoded``, optionally with a UTF-8 charset."""
    if not content_type:
        return False
    media, _, rest = content_type.partition(";")
    if media.strip().lower() != FORM_CONTENT_TYPE:
        return False
    for parameter in rest.split(";"):
        name, _, value = parameter.strip().partition("=")
        if name.lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return False
    return True


async def read_form(request: Request) -> dict[str, str]:
    """The request body as form parameters. Anything else than a bounded UTF-8 form is ``invalid_request``."""
    if not is_form(request.headers.get("content-type")):
        raise OAuthError(INVALID_REQUEST, f"The request body must be {FORM_CONTENT_TYPE}.")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_FORM_BYTES:
                raise OAuthError(INVALID_REQUEST, "The request body is too large.")
            chunks.append(chunk)
    except ClientDisconnect:
        raise OAuthError(INVALID_REQUEST, "The request body is incomplete.") from None
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise OAuthError(INVALID_REQUEST, "Parameters must be UTF-8.") from None
    return parse_parameters(text)


def single_header(request: Request, name: str) -> str | None:
    """A header that may appear at most once (``Authorization``): twice is ``invalid_request``."""
    values = request.headers.getlist(name)
    if len(values) > 1:
        raise OAuthError(INVALID_REQUEST, f"More than one {name} header.")
    return values[0] if values else None
