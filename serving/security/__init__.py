"""Security: TLS material with rotation, the token file, scopes, client identity and per-client limits."""
