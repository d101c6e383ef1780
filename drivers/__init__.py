"""Protocol drivers and tool simulators.

``driver_class(kind)`` maps the ``driver`` key of a tool file to its implementation.
Modules are imported on first use, so a protocol stack that a site does not use need
not be installed.
"""

from __future__ import annotations

import importlib

from drivers.base import Driver

__all__ = ["DRIVER_KINDS", "driver_class"]

_REGISTRY = {
    "hsms": "drivers.secs.driver:HsmsDriver",
    "modbus": "drivers.modbus.driver:ModbusDriver",
    "opcua": "drivers.opcua.driver:OpcUaDriver",
    "simulated": "drivers.simulated:SimulatedDriver",
}

DRIVER_KINDS = tuple(sorted(_REGISTRY))


def driver_class(kind: str) -> type[Driver]:
    """Return the driver class for ``kind``; raise ``KeyError`` for an unknown kind."""
    module_name, _, class_name = _REGISTRY[kind].partition(":")
    cls: type[Driver] = getattr(importlib.import_module(module_name), class_name)
    return cls
