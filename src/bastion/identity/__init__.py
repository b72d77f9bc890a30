"""Identity: API key format and hashing (protocol logic, no I/O and no HTTP framework)."""
