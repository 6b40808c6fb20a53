"""API keys, organisations and scopes."""
