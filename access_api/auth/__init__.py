"""Authentication: local passwords and tokens, external OIDC tokens, login rate limits."""
