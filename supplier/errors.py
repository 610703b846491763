"""One exception root for the daemon; protocol answers are made from these in one place."""

from __future__ import annotations


class SupplierError(Exception):
    """Root of every error the daemon raises on purpose."""


class ProtocolError(SupplierError):
    """A hub request that gets `{"status": "ERROR", "error": <message>}`; nothing changes."""


class BadRequest(ProtocolError):
    """Malformed body, missing or mistyped field, unknown action."""


class Unauthorized(ProtocolError):
    """No key, or a key that belongs to no configured hub."""


class UnknownActivation(ProtocolError):
    """FINISH_ACTIVATION for an id this agent never gave out (or gave another hub)."""


class StoreError(SupplierError):
    """The database could not do what was asked (disk full, locked, corrupt)."""
