"""Role-based authorization: the route's required permissions against the caller's effective rights."""
