"""The admin listener's application: health, metrics, reload (and later the admin API and console)."""
