"""Concurrency limits: requests in flight per client address, consumer or credential."""
