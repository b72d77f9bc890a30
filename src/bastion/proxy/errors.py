"""Upstream failures, as values the forwarding code can classify (retry? which problem?)."""

from __future__ import annotations

from typing import ClassVar


class UpstreamError(Exception):
    """Base class. ``before_response`` tells whether any response byte had arrived."""

    retryable_kind: ClassVar[bool] = False

    def __init__(self, reason: str, *, before_response: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.before_response = before_response


class UpstreamConnectError(UpstreamError):
    """Could not connect, or a pooled connection was found closed before any response byte."""

    retryable_kind: ClassVar[bool] = True


class UpstreamTimeout(UpstreamError):
    """Connect, read or total timeout."""


class UpstreamBadResponse(UpstreamError):
    """Unparseable or oversized response head, or broken body framing."""


class UpstreamUnavailable(UpstreamError):
    """No healthy target to send to."""
