"""Command-line client and Python client for the Nepenthe HTTP API."""
