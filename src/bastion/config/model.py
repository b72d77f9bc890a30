"""The declarative configuration model. Every field is described: docs/configuration.md is generated
from these descriptions (``bastion config-docs``), so the docs and the validator never disagree."""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

_NAME = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"}


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise ValueError(f"not an IP address or CIDR: {value!r}") from exc
    return value


def _check_secret_ref(value: str) -> str:
    if not re.match(r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:.+)$", value):
        raise ValueError("secrets are references: 'env:NAME' or 'file:/path', never literal values")
    return value


Cidr = Annotated[str, AfterValidator(_check_cidr)]
SecretRef = Annotated[str, AfterValidator(_check_secret_ref)]
Name = Annotated[str, Field(pattern=_NAME)]
PolicyMap = dict[str, dict[str, Any]]


class Lifecycle(StrEnum):
    ACTIVE = "active"
    DEPRECATED = "deprecated"
    RETIRED = "retired"


class HstsConfig(Model):
    max_age: int = Field(31536000, ge=0, description="Strict-Transport-Security max-age in seconds.")
    include_subdomains: bool = Field(True, description="Add `includeSubDomains` to HSTS.")
    preload: bool = Field(False, description="Add `preload` to HSTS (only when you have submitted the domain).")


class HttpsListener(Model):
    enabled: bool = Field(True, description="Serve HTTPS. Switching it off serves the API over plain HTTP "
                          "and logs a warning at every start: for local development only.")
    host: str = Field("0.0.0.0", description="Address to bind.")
    port: int = Field(8443, ge=0, le=65535, description="Port to bind (0 picks a free port).")
    cert_file: str | None = Field(None, description="PEM certificate chain. Relative paths are relative "
                                  "to the config file.")
    key_file: str | None = Field(None, description="PEM private key for `cert_file`.")
    self_signed: bool = Field(False, description="Development only: when no certificate is given, generate "
                              "a self-signed one in `data_dir` on first run (key file mode 0600).")
    hsts: HstsConfig = Field(default_factory=HstsConfig, description="HSTS header sent on every HTTPS response.")

    @model_validator(mode="after")
    def _cert_pair(self) -> HttpsListener:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.enabled and self.cert_file is None and not self.self_signed:
            raise ValueError("HTTPS needs cert_file and key_file (or self_signed: true for development)")
        return self


class HttpListener(Model):
    enabled: bool = Field(True, description="Open the plain-HTTP listener. With HTTPS on it only answers "
                          "308 redirects to HTTPS.")
    host: str = Field("0.0.0.0", description="Address to bind.")
    port: int = Field(8080, ge=0, le=65535, description="Port to bind.")
    redirect_port: int | None = Field(None, description="HTTPS port to put in redirects, when clients reach "
                                      "HTTPS on another port than `server.https.port` (e.g. behind NAT).")


class FailedAuthConfig(Model):
    """The failed-authentication brake of `key-auth`, `oauth2` and the admin API."""

    max_failures: int = Field(10, ge=1, description="Invalid credentials from one client address within "
                              "`window` before it is blocked.")
    window: float = Field(60.0, gt=0, description="Seconds over which failures are counted.")
    block: float = Field(300.0, gt=0, description="Seconds a client address stays blocked (429).")


class AdminListener(Model):
    enabled: bool = Field(True, description="Open the admin listener (health, metrics, reload).")
    host: str = Field("127.0.0.1", description="Address to bind. Keep it on loopback or a private network.")
    port: int = Field(9090, ge=0, le=65535, description="Port to bind.")
    failed_auth: FailedAuthConfig = Field(default_factory=FailedAuthConfig, description="Slow down admin "
                                          "credential guessing: block addresses that send many bad keys. "
                                          "Counted together by every node when `redis` is set; read at "
                                          "start.")


class Limits(Model):
    max_header_bytes: int = Field(32768, ge=1024, description="Total bytes of the request head -> 431.")
    max_header_count: int = Field(100, ge=8, description="Number of request header fields -> 431.")
    max_uri_bytes: int = Field(8192, ge=256, description="Length of the request target -> 414.")
    max_body_bytes: int = Field(1048576, ge=0, description="Default request body limit, overridable per API "
                                "and route -> 413. Counted while streaming.")
    head_timeout: float = Field(10.0, gt=0, description="Seconds for the whole request head to arrive, "
                                "whatever its speed -> 408 and close.")
    body_timeout: float = Field(30.0, gt=0, description="Seconds for the whole request body -> 408 and close.")
    idle_timeout: float = Field(60.0, gt=0, description="Seconds a keep-alive connection may wait for "
                                "its next request.")
    max_connections: int = Field(10000, ge=1, description="Open client connections per listener. At the "
                                 "cap, idle keep-alive connections are closed first; new ones are refused.")
    max_connections_per_ip: int = Field(256, ge=1, description="Open connections from one client address.")
    max_requests_per_connection: int = Field(10000, ge=1, description="Requests served on one keep-alive "
                                             "connection before it is closed.")


class AccessLog(Model):
    enabled: bool = Field(True, description="Write one JSON line per request.")
    path: str = Field("-", description="File to append to; `-` is standard output.")


class ServerConfig(Model):
    https: HttpsListener = Field(default_factory=lambda: HttpsListener(self_signed=True),
                                 description="The HTTPS listener.")
    http: HttpListener = Field(default_factory=HttpListener, description="The plain-HTTP listener.")
    admin: AdminListener = Field(default_factory=AdminListener, description="The admin listener.")
    limits: Limits = Field(default_factory=Limits, description="HTTP hardening limits and deadlines.")
    trusted_proxies: list[Cidr] = Field(default_factory=list, description="CIDRs of proxies in front of "
                                        "Bastion. Only from these are X-Forwarded-For and X-Request-ID "
                                        "trusted; they decide the client address every policy sees.")
    data_dir: str = Field(".bastion", description="Directory for generated certificates and local state. "
                          "Relative to the config file.")
    docs_base_url: str = Field("https://bastion.dev/docs", description="Base of the `type` URI in "
                               "problem+json errors.")
    access_log: AccessLog = Field(default_factory=AccessLog, description="The access log.")
    drain_timeout: float = Field(15.0, ge=0, description="Seconds to let in-flight requests finish on "
                                 "shutdown.")


class Target(Model):
    url: str = Field(..., description="`http://host:port[/prefix]` of one upstream instance.")
    weight: int = Field(1, ge=1, le=1000, description="Relative share of requests (weighted round robin).")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^http://[^/?#@\s]+(/[^?#\s]*)?$", value):
            raise ValueError("target url must be http://host[:port][/prefix] (no userinfo, query or fragment)")
        return value


class Timeouts(Model):
    connect: float = Field(2.0, gt=0, description="Seconds to open a connection -> 504.")
    read: float = Field(30.0, gt=0, description="Seconds of upstream silence while waiting for the "
                        "response head or body -> 504.")
    total: float = Field(60.0, gt=0, description="Seconds for the whole exchange, including retries -> 504.")


class Retries(Model):
    attempts: int = Field(2, ge=0, le=5, description="Extra attempts for idempotent requests that failed "
                          "before any response byte (connect errors, reset pooled connections).")
    budget_ratio: float = Field(0.2, ge=0, le=1, description="Retries may add at most this share of the "
                                "upstream's request rate (Envoy-style retry budget).")
    min_per_second: int = Field(3, ge=0, description="Retries always allowed per second, whatever the ratio.")


class ActiveHealthCheck(Model):
    enabled: bool = Field(False, description="Probe each target periodically.")
    path: str = Field("/healthz", description="Path to GET on each target.")
    interval: float = Field(5.0, gt=0, description="Seconds between probes.")
    timeout: float = Field(1.0, gt=0, description="Seconds a probe may take.")
    healthy_threshold: int = Field(2, ge=1, description="Successive good probes that mark a target healthy.")
    unhealthy_threshold: int = Field(2, ge=1, description="Successive failed probes that mark it unhealthy.")
    expected_status: list[int] = Field(default_factory=lambda: [200, 204],
                                       description="Statuses counted as healthy.")


class PassiveHealthCheck(Model):
    enabled: bool = Field(True, description="Eject a target after consecutive failures (circuit breaker).")
    consecutive_failures: int = Field(5, ge=1, description="Connect errors, timeouts or 502/503/504 in a row "
                                      "that eject a target.")
    ejection_time: float = Field(30.0, gt=0, description="Seconds of the first ejection; doubled for each "
                                 "repeated ejection, capped at 300 s.")


class HealthCheck(Model):
    active: ActiveHealthCheck = Field(default_factory=ActiveHealthCheck, description="Active probing.")
    passive: PassiveHealthCheck = Field(default_factory=PassiveHealthCheck, description="Passive ejection.")


class UpstreamConfig(Model):
    targets: list[Target] = Field(..., min_length=1, description="One or more instances, balanced "
                                  "round robin by weight.")
    timeouts: Timeouts = Field(default_factory=Timeouts, description="Upstream timeouts.")
    retries: Retries = Field(default_factory=Retries, description="Retries for idempotent methods.")
    health_check: HealthCheck = Field(default_factory=HealthCheck, description="Health checking.")
    max_connections: int = Field(256, ge=1, description="Pooled connections per target (busy + idle).")
    idle_connection_timeout: float = Field(30.0, gt=0, description="Seconds an idle pooled connection is kept.")
    preserve_host: bool = Field(False, description="Send the client's Host upstream instead of the "
                                "target's host.")
    max_response_header_bytes: int = Field(65536, ge=1024, description="Upstream response heads larger "
                                           "than this are refused -> 502.")
    max_response_bytes: int | None = Field(None, ge=0, description="Upstream response bodies larger than this "
                                           "are refused (502 before the response starts, or the connection "
                                           "is cut when it streams past the cap). Null: no cap.")
    max_concurrent_requests: int | None = Field(None, ge=1, description="Requests in flight to this upstream "
                                                "at once (a bulkhead: one slow service cannot take every "
                                                "connection); beyond it -> 503 `upstream.busy`. Null: no cap.")


class RouteSettings(Model):
    policies: PolicyMap = Field(default_factory=dict, description="Policies for this route, by name. "
                                "They replace the API's and global entries of the same name.")
    max_body_bytes: int | None = Field(None, ge=0, description="Request body limit for this route.")
    mask_upstream_errors: bool | None = Field(None, description="Replace upstream 5xx bodies with a gateway "
                                              "problem (default true).")
    public: bool | None = Field(None, description="Serve this route without authentication. Every other route "
                                "needs an authentication policy (deny by default).")
    permissions: list[str] | None = Field(None, description="Permissions a caller needs (all of them), on top "
                                          "of the API's and those of the OpenAPI operation's security scopes.")
    admin: bool | None = Field(None, description="Administrative route: needs an admin-level credential.")


class RouteConfig(RouteSettings):
    name: Name = Field(..., description="Route name: used in logs and metrics labels.")
    path: str = Field(..., description="Path template relative to the API's base_path: literal segments, "
                      "`{param}` and a final `**`.")
    methods: list[str] = Field(..., min_length=1, description="HTTP methods (HEAD is implied by GET).")

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: list[str]) -> list[str]:
        upper = [m.upper() for m in value]
        unknown = sorted(set(upper) - _METHODS)
        if unknown:
            raise ValueError(f"unknown HTTP methods: {', '.join(unknown)}")
        return upper


class ApiConfig(Model):
    name: Name = Field(..., description="API name: used in logs and metric labels.")
    version: str | None = Field(None, description="Version label, e.g. `v1`.")
    base_path: str = Field("", description="Prefix of every route of this API, e.g. `/v1`.")
    hosts: list[str] = Field(default_factory=list, description="Host names this API answers "
                             "(`*.example.com` allowed). Empty: any host.")
    upstream: Name = Field(..., description="Name of the upstream that serves it.")
    lifecycle: Lifecycle = Field(Lifecycle.ACTIVE, description="`active`, `deprecated` (served, flagged), "
                                 "or `retired` (answers 410).")
    strip_base_path: bool = Field(False, description="Remove base_path before forwarding upstream.")
    openapi: str | None = Field(None, description="OpenAPI 3.0/3.1 document (YAML or JSON). Each operation "
                                "becomes a route named by its operationId.")
    operations: dict[str, RouteSettings] = Field(default_factory=dict, description="Settings for OpenAPI "
                                                 "operations, by operationId.")
    routes: list[RouteConfig] = Field(default_factory=list, description="Routes declared by hand.")
    policies: PolicyMap = Field(default_factory=dict, description="Policies for every route of the API.")
    max_body_bytes: int | None = Field(None, ge=0, description="Request body limit for the API's routes.")
    mask_upstream_errors: bool = Field(True, description="Replace upstream 5xx bodies with a gateway problem.")
    public: bool = Field(False, description="Serve every route of this API without authentication (a route "
                         "or an OpenAPI operation with `security: []` can also be public on its own).")
    permissions: list[str] = Field(default_factory=list, description="Permissions every route of the API "
                                   "requires.")

    @field_validator("base_path")
    @classmethod
    def _base_path(cls, value: str) -> str:
        if value and (not value.startswith("/") or value.endswith("/") or "{" in value):
            raise ValueError("base_path must start with '/', not end with '/', and hold no parameters")
        return value

    @model_validator(mode="after")
    def _has_routes(self) -> ApiConfig:
        if not self.routes and self.openapi is None:
            raise ValueError("an API needs `routes` or an `openapi` document")
        return self


class KeysConfig(Model):
    pepper: SecretRef | None = Field(None, description="Server-side secret mixed into every stored API-key "
                                     "hash (HMAC-SHA256), as `env:NAME` or `file:PATH`, at least 32 bytes. It "
                                     "is never stored in the database. When unset, a random one is created "
                                     "in `data_dir/key-pepper` (mode 0600): fine for one node, but several "
                                     "nodes must share it.")
    default_ttl_days: float = Field(90, gt=0, description="Lifetime of a new key when none is asked for.")
    max_ttl_days: float = Field(365, gt=0, description="Longest lifetime a key may be given.")
    rotation_overlap_hours: float = Field(24, ge=0, description="How long a rotated key keeps working next "
                                          "to its successor.")
    cache_ttl: float = Field(30.0, gt=0, le=300, description="Seconds a key's database record is cached on a "
                             "node. Revocations and consumer changes clear the cache at once (on every node "
                             "within 1 s when Redis is configured); this bounds staleness otherwise.")


_JWS_ASYMMETRIC = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}


def _check_algorithms(value: list[str]) -> list[str]:
    bad = [a for a in value if a not in _JWS_ASYMMETRIC]
    if bad:
        raise ValueError(f"unsupported or unsafe algorithms {bad}: use asymmetric ones "
                         f"({', '.join(sorted(_JWS_ASYMMETRIC))}); `none` and shared-secret HS* are refused")
    return value


Algorithms = Annotated[list[str], Field(min_length=1), AfterValidator(_check_algorithms)]


def _check_fetch_url(value: str) -> str:
    """Keys and token answers come over TLS; plain HTTP only on loopback (a local IdP in development)."""
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    host = (parts.hostname or "").lower()
    loopback = host in {"localhost", "::1"} or host.startswith("127.")
    if parts.scheme == "https" and host:
        return value
    if parts.scheme == "http" and loopback:
        return value
    raise ValueError("must be an https:// URL (http:// only to a loopback address)")


FetchUrl = Annotated[str, AfterValidator(_check_fetch_url)]


class JwksCacheConfig(Model):
    default_ttl: float = Field(300.0, gt=0, description="Seconds a JWKS is kept when the response has no "
                               "usable Cache-Control max-age.")
    min_ttl: float = Field(60.0, gt=0, description="Lower bound on the Cache-Control lifetime.")
    max_ttl: float = Field(86400.0, gt=0, description="Upper bound on the Cache-Control lifetime.")
    refetch_interval: float = Field(30.0, gt=0, description="On a token with an unknown `kid`, the JWKS is "
                                    "fetched again at most once per this many seconds (single-flight), so "
                                    "random `kid`s cannot make the gateway hammer the identity provider.")
    stale_for: float = Field(3600.0, ge=0, description="Seconds an expired JWKS is still used while the "
                             "identity provider cannot be reached; after that, tokens are refused (fail closed).")
    fetch_timeout: float = Field(5.0, gt=0, description="Seconds for one JWKS or discovery request.")


class IntrospectionConfig(Model):
    endpoint: FetchUrl = Field(..., description="The IdP's RFC 7662 introspection endpoint (https, or http on "
                          "loopback only).")
    client_id: str = Field(..., description="Client id Bastion authenticates with (HTTP Basic).")
    client_secret: SecretRef = Field(..., description="Its secret, as `env:NAME` or `file:PATH`.")
    cache_ttl: float = Field(30.0, ge=0, le=300, description="Seconds an introspection answer is reused "
                             "(never past the token's `exp`). This is the revocation latency for opaque "
                             "tokens: a token revoked at the IdP keeps working on a node for at most this long.")
    timeout: float = Field(5.0, gt=0, description="Seconds for one introspection request.")


class ClaimMapping(Model):
    subject: str = Field("sub", description="Claim holding the subject (user or client).")
    client_id: list[str] = Field(default_factory=lambda: ["client_id", "azp", "cid"], description="Claims "
                                 "tried in order for the OAuth client id (RFC 9068 `client_id`, OIDC `azp`, "
                                 "Okta `cid`).")
    roles: str | None = Field(None, description="Dotted path of a claim holding a list of roles, e.g. "
                              "`realm_access.roles` (Keycloak) or `roles` (Entra). Forwarded, not trusted "
                              "for permissions.")
    consumer: str = Field("client_id", description="Which identity names the consumer for rate limits, "
                          "quotas and logs: `client_id` (the application) or `subject`.")


class TrustedIssuerConfig(Model):
    name: Name = Field(..., description="Name used by the `oauth2` policy's `issuers` list and in logs.")
    issuer: str = Field(..., description="The exact `iss` value tokens carry (compared byte for byte).")
    audiences: list[str] = Field(..., min_length=1, description="Tokens must name at least one of these in "
                                 "`aud`.")
    algorithms: Algorithms = Field(..., description="Signature algorithms accepted (explicit allow-list, "
                                   "asymmetric only). A key is only ever used with one algorithm.")
    jwks_uri: FetchUrl | None = Field(None, description="Where the signing keys are. When unset they are found "
                                 "once through discovery (RFC 8414, then OpenID Connect), and the discovered "
                                 "`issuer` must equal `issuer`.")
    jwks_cache: JwksCacheConfig = Field(default_factory=JwksCacheConfig, description="JWKS caching and "
                                        "refetch limits.")
    leeway: float = Field(30.0, ge=0, le=300, description="Seconds of clock skew tolerated on `exp`, `nbf` "
                          "and `iat`.")
    require_typ: str | None = Field(None, description="Required JOSE `typ`, e.g. `at+jwt` for RFC 9068 "
                                    "access tokens (`application/at+jwt` is the same). Unset: any typ but "
                                    "those of other token kinds (an ID token is never an access token).")
    max_token_bytes: int = Field(8192, ge=256, le=65536, description="Longer tokens are refused unread.")
    claims: ClaimMapping = Field(default_factory=ClaimMapping, description="Which claims identify the caller.")
    introspection: IntrospectionConfig | None = Field(None, description="Accept opaque (non-JWT) tokens by "
                                                      "asking the IdP (RFC 7662).")


class SigningConfig(Model):
    algorithm: str = Field("ES256", pattern="^(ES256|ES384|RS256|PS256)$", description="Algorithm of "
                           "the signing keys Bastion generates.")


class TokenEndpointLimits(Model):
    max_failures: int = Field(10, ge=1, description="Failed client authentications (or bad codes and refresh "
                              "tokens) per client address within `window` before it is blocked.")
    window: float = Field(60.0, gt=0, description="Seconds over which failures are counted.")
    block: float = Field(300.0, gt=0, description="Seconds an address stays blocked.")


class AuthorizationServerConfig(Model):
    enabled: bool = Field(False, description="Serve the built-in OAuth 2.1 authorization server on the "
                          "gateway's listeners (`/oauth2/*`, `/.well-known/oauth-authorization-server`).")
    issuer: str | None = Field(None, description="The server's issuer URL, exactly as clients reach the "
                               "gateway, e.g. `https://api.example.com` (an origin: no path, no trailing slash). "
                               "Required when enabled.")
    audience: str = Field("bastion", description="`aud` of the access tokens it issues; routes accept it "
                          "through the `oauth2` policy.")
    access_token_ttl: int = Field(600, ge=30, le=86400, description="Seconds an access token lives.")
    refresh_token_ttl: int = Field(2592000, ge=60, description="Seconds a refresh-token family lives from its "
                                   "first grant (rotation does not extend it).")
    authorization_code_ttl: int = Field(60, ge=10, le=600, description="Seconds an authorization code may "
                                        "be redeemed (once).")
    signing: SigningConfig = Field(default_factory=SigningConfig, description="Token signing keys.")
    token_endpoint_limits: TokenEndpointLimits = Field(default_factory=TokenEndpointLimits,
                                                       description="Brute-force brake on the token, "
                                                       "revocation and introspection endpoints.")
    user_authentication: str | None = Field(None, description="`module:attribute` of the sign-in step the "
                                            "authorization endpoint runs (the passkey sign-in plugs in here). "
                                            "Unset: the authorization-code grant answers "
                                            "`temporarily_unavailable`.")

    @model_validator(mode="after")
    def _issuer_when_enabled(self) -> AuthorizationServerConfig:
        if self.enabled and not self.issuer:
            raise ValueError("oauth.server.issuer is required when the authorization server is enabled")
        if self.issuer and not re.match(r"^https?://[^/?#@\s]+$", self.issuer):
            raise ValueError("oauth.server.issuer must be the gateway's origin, e.g. https://api.example.com "
                             "(no path, trailing slash, query or fragment): the endpoints live at its root")
        return self


class OAuthConfig(Model):
    issuers: list[TrustedIssuerConfig] = Field(default_factory=list, description="External identity providers "
                                               "whose access tokens the `oauth2` policy accepts.")
    server: AuthorizationServerConfig = Field(default_factory=AuthorizationServerConfig,
                                              description="The built-in authorization server.")

    @model_validator(mode="after")
    def _unique_names(self) -> OAuthConfig:
        names = [i.name for i in self.issuers]
        if len(set(names)) != len(names):
            raise ValueError("oauth.issuers names must be unique")
        if "bastion" in names:
            raise ValueError("the issuer name 'bastion' is reserved for the built-in authorization server")
        return self


def _check_url_or_ref(value: str) -> str:
    if value.startswith(("env:", "file:")):
        return _check_secret_ref(value)
    if re.match(r"^[a-z+]+://[^:/@]*:[^@]+@", value):
        raise ValueError("a URL with a password is a secret: give it as 'env:NAME' or 'file:PATH'")
    return value


UrlOrRef = Annotated[str, AfterValidator(_check_url_or_ref)]


class GatewayConfig(Model):
    version: int = Field(1, ge=1, le=1, description="Configuration format version.")
    server: ServerConfig = Field(default_factory=ServerConfig, description="Listeners, limits and paths.")
    upstreams: dict[Name, UpstreamConfig] = Field(default_factory=dict, description="Upstream services.")
    apis: list[ApiConfig] = Field(default_factory=list, description="The APIs Bastion exposes.")
    policies: PolicyMap = Field(default_factory=dict, description="Policies applied to every route.")
    store: UrlOrRef | None = Field(None, description="Identity store: `sqlite:///path/to/bastion.db` or "
                                   "`postgresql://user@host/db` (a URL with a password as `env:`/`file:`). "
                                   "Default: SQLite in `data_dir/bastion.db`.")
    redis: UrlOrRef | None = Field(None, description="Redis for several nodes: shared rate-limit counters and "
                                   "the revocation broadcast, e.g. `redis://127.0.0.1:6379/0`.")
    redis_timeout: float = Field(0.05, gt=0, le=5, description="Seconds a counter round trip to `redis` (connect, "
                                 "send, answer) may take before it counts as failed and the limit's "
                                 "`on_store_failure` decides: a slow Redis must not hold requests. Raise it for a "
                                 "Redis across a slow link. Read at start.")
    keys: KeysConfig = Field(default_factory=KeysConfig, description="API keys: pepper, lifetimes, rotation.")
    oauth: OAuthConfig = Field(default_factory=OAuthConfig, description="OAuth 2: trusted identity providers "
                               "and the built-in authorization server.")

    # Cross-references (an API's upstream, unique API names) are checked by the compiler, which can point
    # at the exact key and line; a model validator could only blame the whole document.
