"""The service's signing key, loaded once per process."""

from __future__ import annotations

from functools import lru_cache

from app.config import Environment, get_settings
from app.signing import Signer, create_key_file, load_signer


@lru_cache
def get_signer() -> Signer:
    """The Ed25519 key that signs evidence. Outside production a missing key file is created
    (the demo and the tests need no setup); production refuses to start without one."""
    settings = get_settings()
    path = settings.signing_key_file
    if not path.is_file() and settings.env is not Environment.production:
        try:
            create_key_file(path)
        except FileExistsError:  # another process created it first
            pass
    return load_signer(path)
