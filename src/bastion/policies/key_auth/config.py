from __future__ import annotations

from pydantic import Field

from bastion.config.model import Model


class FailedAuthConfig(Model):
    max_failures: int = Field(10, ge=1, description="Invalid credentials from one client address within "
                              "`window` before it is blocked.")
    window: float = Field(60.0, gt=0, description="Seconds over which failures are counted.")
    block: float = Field(300.0, gt=0, description="Seconds a client address stays blocked (429).")


class KeyAuthConfig(Model):
    header: str = Field("X-API-Key", description="Header that may carry the key, besides "
                        "`Authorization: Bearer <key>`.")
    forward_consumer_header: str | None = Field("X-Consumer-ID", description="Header carrying the consumer "
                                                "id (never the key) to the upstream; null to omit.")
    forward_consumer_name_header: str | None = Field("X-Consumer-Name", description="Header carrying the "
                                                     "consumer name to the upstream; null to omit.")
    failed_auth: FailedAuthConfig = Field(default_factory=FailedAuthConfig, description="Slow down "
                                          "credential guessing: block addresses that send many bad keys.")
