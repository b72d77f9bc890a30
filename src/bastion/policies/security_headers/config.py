from __future__ import annotations

from pydantic import Field

from bastion.config.model import Model


class SecurityHeadersConfig(Model):
    content_type_options: bool = Field(True, description="`X-Content-Type-Options: nosniff`.")
    frame_options: str | None = Field("DENY", description="`X-Frame-Options` value; null to omit.")
    content_security_policy: str | None = Field(
        "default-src 'none'; frame-ancestors 'none'",
        description="`Content-Security-Policy` for API responses; null to omit.")
    referrer_policy: str | None = Field("no-referrer", description="`Referrer-Policy`; null to omit.")
    cache_control: str | None = Field("no-store", description="`Cache-Control` added when the upstream "
                                      "sent none (APIs often carry personal data); null to omit.")
    cross_origin_resource_policy: str | None = Field("same-origin", description="`Cross-Origin-Resource-"
                                                     "Policy`; null to omit.")
    extra: dict[str, str] = Field(default_factory=dict, description="More headers to set on every response.")
