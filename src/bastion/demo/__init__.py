"""The bundled demo upstream: a small in-memory shop API that the gateway fronts in the demo and in tests."""
