"""Never log a secret: query parameters that look like credentials are replaced before logging."""

from __future__ import annotations

import re

_SECRET_NAME = re.compile(
    r"(?i)(key|token|secret|passw|pwd|auth|sig|session|credential|code|assertion|otp|jwt|bearer|cookie)")
REDACTED = "[REDACTED]"


def redact_query(query: str) -> str:
    if not query:
        return ""
    parts = []
    for pair in query.split("&"):
        name, sep, value = pair.partition("=")
        if sep and value and _SECRET_NAME.search(name):
            parts.append(f"{name}={REDACTED}")
        elif not sep and len(pair) >= 20:
            parts.append(REDACTED)  # a bare long token (`?abcdef...`) is treated as a credential
        else:
            parts.append(pair)
    return "&".join(parts)
