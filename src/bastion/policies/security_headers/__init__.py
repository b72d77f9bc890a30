"""Security response headers for API responses."""
