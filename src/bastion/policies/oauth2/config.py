"""`oauth2` policy settings."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

from bastion.config.model import FailedAuthConfig, Model

_RESERVED = frozenset({"authorization", "host", "content-length", "transfer-encoding", "connection", "cookie",
                       "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id"})


def _check_header_name(value: str | None) -> str | None:
    if value is None:
        return None
    if not value or not all(ch.isascii() and (ch.isalnum() or ch == "-") for ch in value):
        raise ValueError(f"not a header name: {value!r} (letters, digits and '-')")
    if value.lower() in _RESERVED:
        raise ValueError(f"{value!r} cannot carry a forwarded identity")
    return value


HeaderName = Annotated[str | None, AfterValidator(_check_header_name)]


class OAuth2Config(Model):
    issuers: list[str] | None = Field(None, min_length=1, description="Names of the trusted issuers whose "
                                      "tokens this route accepts (`oauth.issuers[].name`, and `bastion` for the "
                                      "built-in authorization server). Default: every configured issuer, plus "
                                      "`bastion` when the built-in server is enabled.")
    forward_consumer_header: HeaderName = Field("X-Consumer-ID", description="Header carrying the consumer id "
                                                "(`<issuer>:<client id or subject>`) upstream; null to omit.")
    forward_subject_header: HeaderName = Field("X-Authenticated-Subject", description="Header carrying the "
                                               "token's subject (`sub`) upstream; null to omit.")
    forward_client_id_header: HeaderName = Field("X-Authenticated-Client-ID", description="Header carrying "
                                                 "the OAuth client id upstream; null to omit.")
    forward_scopes_header: HeaderName = Field("X-Authenticated-Scope", description="Header carrying the granted "
                                              "scopes (space-separated) upstream; null to omit.")
    forward_roles_header: HeaderName = Field("X-Authenticated-Roles", description="Header carrying the roles "
                                             "the issuer asserted (`claims.roles`, comma-separated) upstream; "
                                             "null to omit.")
    forward_issuer_header: HeaderName = Field("X-Authenticated-Issuer", description="Header carrying the "
                                              "trusted issuer's configured name upstream; null to omit.")
    failed_auth: FailedAuthConfig = Field(default_factory=FailedAuthConfig, description="Slow down token "
                                          "guessing: block addresses that send many invalid tokens.")
