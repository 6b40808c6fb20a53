"""Per-organisation quotas and limits: what one organisation may ask of the service."""
