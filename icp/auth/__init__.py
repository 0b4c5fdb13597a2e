"""Authentication (bearer tokens, console sessions) and authorization (roles, agencies)."""
