"""Signed webhooks: organisations are told of their deletion requests' state changes."""
