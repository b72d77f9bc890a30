"""The `bastion` command."""
