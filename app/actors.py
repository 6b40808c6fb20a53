"""Who is acting: the organisation, a name for the audit log, and what it may do."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from enum import StrEnum


class Scope(StrEnum):
    register = "register"  # register models and datasets, upload checkpoints
    submit = "submit"  # submit, extend and cancel deletion requests
    download = "download"  # download checkpoints and job artifacts
    audit = "audit"  # read audit events and evidence, verify the chain
    admin = "admin"  # manage keys and webhooks, override supersession; implies every scope


@dataclass(frozen=True)
class Actor:
    org_id: str
    name: str  # "key:<id>", "worker:<host>" or "cli:<user>"
    scopes: frozenset[Scope] = field(default_factory=frozenset)
    client_address: str | None = None
    http_request_id: str | None = None

    def may(self, scope: Scope) -> bool:
        return Scope.admin in self.scopes or scope in self.scopes


def worker_actor(org_id: str) -> Actor:
    """The actor of events a worker writes while running a job."""
    return Actor(org_id=org_id, name=f"worker:{socket.gethostname()}")
