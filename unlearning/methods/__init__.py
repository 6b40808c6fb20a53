"""Unlearning methods, registered by name."""
