"""The store's exceptions."""

from __future__ import annotations

__all__ = ["StoreClosedError", "StoreError"]


class StoreError(Exception):
    """The database cannot be opened or used (other than for being corrupt)."""


class StoreClosedError(StoreError):
    """The store was used after :meth:`~gateway.store.Store.close`."""
