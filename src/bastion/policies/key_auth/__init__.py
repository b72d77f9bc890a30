"""API-key authentication."""
