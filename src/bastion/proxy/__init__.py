"""Upstream connections, pools, balancing, health and header hygiene."""
