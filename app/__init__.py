"""Nepenthe HTTP service."""
