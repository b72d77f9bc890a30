"""Configuration of the failed-authentication brake shared by `key-auth` and `oauth2`."""

from __future__ import annotations

from pydantic import Field

from bastion.config.model import Model


class FailedAuthConfig(Model):
    max_failures: int = Field(10, ge=1, description="Invalid credentials from one client address within "
                              "`window` before it is blocked.")
    window: float = Field(60.0, gt=0, description="Seconds over which failures are counted.")
    block: float = Field(300.0, gt=0, description="Seconds a client address stays blocked (429).")
