"""Request and response bodies of the admin API's OAuth endpoints (clients and signing keys).

As in ``schemas``: requests are strict and forbid unknown fields; the value rules (redirect-URI shapes,
which grants a public client may use, scope syntax) are the store's, so the CLI and the API agree.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from bastion.admin.schemas import RequestModel, ResponseModel, StatusName, without_defaults
from bastion.oauth.server.keys import SigningKeyInfo
from bastion.oauth.server.store import OAuthClient

ClientKindName = Literal["confidential", "public"]
GrantTypeName = Literal["client_credentials", "authorization_code", "refresh_token"]
SigningKeyState = Literal["next", "active", "retired"]

_Name = Annotated[str, Field(min_length=1, max_length=200)]
_Grants = Annotated[list[GrantTypeName], Field(min_length=1, max_length=3)]
_Scopes = Annotated[list[Annotated[str, Field(max_length=200)]], Field(max_length=100)]
_RedirectUris = Annotated[list[Annotated[str, Field(min_length=1, max_length=2000)]], Field(max_length=20)]
_MAX_HOURS = 24 * 366


# -- requests ----------------------------------------------------------------------------------------------


class OAuthClientCreate(RequestModel):
    """A new OAuth client of a consumer: its tokens never carry more than the consumer's permissions."""

    consumer: _Name = Field(description="The owning consumer's id or name.")
    name: _Name = Field(description="A label for people (not unique).")
    kind: ClientKindName = Field(description="`confidential` clients authenticate with a secret (shown once); "
                                 "`public` clients (apps that cannot keep one) use PKCE only and may not use "
                                 "`client_credentials`.")
    grant_types: _Grants = Field(description="Grants the client may use.")
    scopes: _Scopes = Field(default_factory=list, description="The most the client may be granted (permission "
                            "syntax, e.g. `orders:read`); tokens get these intersected with the consumer's "
                            "permissions.")
    redirect_uris: _RedirectUris = Field(default_factory=list, description="Exact redirect URIs for the "
                                         "authorization-code grant: https, http on loopback only, or a "
                                         "private-use scheme; no fragments.")


class OAuthClientUpdate(RequestModel):
    """Only the fields present change; lists are replaced, not merged."""

    model_config = ConfigDict(json_schema_extra=without_defaults)

    # The defaults below are never applied (nor documented): the handler passes on only the fields sent.
    name: _Name = "-"
    grant_types: _Grants = Field(default_factory=list)
    scopes: _Scopes = Field(default_factory=list)
    redirect_uris: _RedirectUris = Field(default_factory=list)
    status: StatusName = Field("active", description="`disabled` refuses the client at the token endpoint.")


class OAuthSecretRotate(RequestModel):
    overlap_hours: float | None = Field(None, ge=0, le=_MAX_HOURS, description="How long the old secret keeps "
                                        "working; default `keys.rotation_overlap_hours`.")


class SigningKeyRotate(RequestModel):
    emergency: bool = Field(False, description="The active key is compromised: stop accepting every token it "
                            "signed at once, on every node, instead of keeping it published until they expire. "
                            "Clients must get new access tokens (refresh tokens are not signed and keep "
                            "working).")


# -- responses ---------------------------------------------------------------------------------------------


class OAuthClientOut(ResponseModel):
    """A client's record. It never holds the secret or its digest."""

    client_id: str
    consumer_id: str
    name: str
    kind: ClientKindName
    grant_types: list[str]
    scopes: list[str]
    redirect_uris: list[str]
    status: StatusName
    created_at: datetime
    updated_at: datetime
    secret_rotated_at: datetime | None
    previous_secret_expires_at: datetime | None = Field(description="Until then the secret before the last "
                                                        "rotation is accepted too.")

    @classmethod
    def of(cls, client: OAuthClient) -> OAuthClientOut:
        return cls(client_id=client.client_id, consumer_id=client.consumer_id, name=client.name,
                   kind=client.kind.value, grant_types=list(client.grant_types), scopes=list(client.scopes),
                   redirect_uris=list(client.redirect_uris), status=client.status, created_at=client.created_at,
                   updated_at=client.updated_at, secret_rotated_at=client.secret_rotated_at,
                   previous_secret_expires_at=client.previous_secret_expires_at)


class OAuthClientList(ResponseModel):
    items: list[OAuthClientOut]


class IssuedOAuthClient(OAuthClientOut):
    """A new client's record with its secret, shown this once: only a keyed hash is stored."""

    client_secret: str | None = Field(description="The client secret (shown once); null for public clients.")

    @classmethod
    def issued(cls, client: OAuthClient, secret: str | None) -> IssuedOAuthClient:
        return cls(client_secret=secret, **OAuthClientOut.of(client).model_dump())


class RotatedClientSecret(OAuthClientOut):
    """The client's record with its new secret (shown once); the previous one works until
    `previous_secret_expires_at`."""

    client_secret: str = Field(description="The new client secret (shown once).")

    @classmethod
    def rotated(cls, client: OAuthClient, secret: str) -> RotatedClientSecret:
        return cls(client_secret=secret, **OAuthClientOut.of(client).model_dump())


class SigningKeyOut(ResponseModel):
    """A signing key's public facts: never key material."""

    kid: str
    alg: str
    state: SigningKeyState = Field(description="`next`: published, not yet signing; `active`: signing; "
                                   "`retired`: published until `keep_until` so its tokens still verify.")
    created_at: datetime
    activated_at: datetime | None
    retired_at: datetime | None
    keep_until: datetime | None

    @classmethod
    def of(cls, info: SigningKeyInfo) -> SigningKeyOut:
        return cls(kid=info.kid, alg=info.algorithm, state=info.state, created_at=info.created_at,
                   activated_at=info.activated_at, retired_at=info.retired_at, keep_until=info.keep_until)


class SigningKeyList(ResponseModel):
    items: list[SigningKeyOut]


class SigningKeyRotation(ResponseModel):
    active: SigningKeyOut = Field(description="The key that signs from now on.")
    items: list[SigningKeyOut] = Field(description="Every key after the rotation.")
