"""Structured logging with redaction, Prometheus metrics."""
