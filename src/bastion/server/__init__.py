"""Listeners, TLS and the hardened HTTP/1.1 server."""
