"""User-facing entry points: the offline ``Engine`` (and later the HTTP server)."""
