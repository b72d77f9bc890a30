"""Rate limiting per client, consumer, credential or header."""
