"""OAuth 2 bearer-token authentication (the resource-server side)."""
