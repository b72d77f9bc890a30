"""Quotas per consumer or credential per calendar day or month (UTC)."""
