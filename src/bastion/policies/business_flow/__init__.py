"""Sensitive business flows (OWASP API6): velocity limits per consumer, per client address and overall."""
