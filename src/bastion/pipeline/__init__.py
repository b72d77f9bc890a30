"""Compiles configuration into per-route policy chains and runs requests through them."""
