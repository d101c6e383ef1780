"""The Modbus driver's faults, all :class:`~drivers.base.DriverError`s.

Exception responses are not faults: they mark the tags of their request bad and
the poll goes on. These are the faults that end the session, after which the
supervisor reconnects with the shared backoff.
"""

from __future__ import annotations

from drivers.base import ConnectionLost

__all__ = ["FrameError", "RequestTimeout", "TransactionMismatch", "exception_name"]

# Exception codes of the Modbus Application Protocol (v1.1b3, section 7).
EXCEPTION_NAMES: dict[int, str] = {
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "server device failure",
    0x05: "acknowledge",
    0x06: "server device busy",
    0x08: "memory parity error",
    0x0A: "gateway path unavailable",
    0x0B: "gateway target device failed to respond",
}


def exception_name(code: int) -> str:
    """Return the protocol's name of exception ``code``."""
    return EXCEPTION_NAMES.get(code, f"exception {code:#04x}")


class RequestTimeout(ConnectionLost):
    """A request got no reply within ``request_timeout_s``."""


class TransactionMismatch(ConnectionLost):
    """A reply does not answer any request in flight: the connection is out of step."""


class FrameError(ConnectionLost):
    """A reply is malformed (wrong protocol id, length, function or byte count)."""
