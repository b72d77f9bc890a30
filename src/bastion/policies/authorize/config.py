"""`authorize` configuration."""

from __future__ import annotations

from pydantic import Field

from bastion.config.model import Model


class AuthorizeConfig(Model):
    permissions: list[str] = Field(default_factory=list, description="Permissions every request needs "
                                   "(all of them).")
    admin: bool = Field(False, description="Administrative route: needs an admin-level credential.")
