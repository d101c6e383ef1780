"""OPC UA: the client driver (asyncua), its PKI, and a simulator of a tool's server."""

from __future__ import annotations

from drivers.opcua.config import OpcUaSettings, OpcUaSource, SubscriptionSettings
from drivers.opcua.driver import OpcUaDriver

__all__ = ["OpcUaDriver", "OpcUaSettings", "OpcUaSource", "SubscriptionSettings"]
