from __future__ import annotations

from pydantic import Field

from bastion.config.model import Cidr, Model


class IpAllowConfig(Model):
    allow: list[Cidr] = Field(default_factory=list, description="Addresses or CIDRs allowed. Once set, "
                              "every other address is denied (deny by default).")
    deny: list[Cidr] = Field(default_factory=list, description="Addresses or CIDRs always denied; checked "
                             "before `allow`.")
