"""IP/CIDR allow- and deny-lists."""
