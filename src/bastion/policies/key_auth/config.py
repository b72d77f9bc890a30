from __future__ import annotations

from pydantic import Field

from bastion.config.model import FailedAuthConfig, Model


class KeyAuthConfig(Model):
    header: str = Field("X-API-Key", description="Header that may carry the key, besides "
                        "`Authorization: Bearer <key>`.")
    forward_consumer_header: str | None = Field("X-Consumer-ID", description="Header carrying the consumer "
                                                "id (never the key) to the upstream; null to omit.")
    forward_consumer_name_header: str | None = Field("X-Consumer-Name", description="Header carrying the "
                                                     "consumer name to the upstream; null to omit.")
    failed_auth: FailedAuthConfig = Field(default_factory=FailedAuthConfig, description="Slow down "
                                          "credential guessing: block addresses that send many bad keys.")
