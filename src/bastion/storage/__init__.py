"""Storage: database engines, schema migrations and the stores built on them.

Import the concrete modules (``bastion.storage.identity_store``, ``bastion.storage.migrate``); this package
imports nothing so that importing one store does not load every driver."""
