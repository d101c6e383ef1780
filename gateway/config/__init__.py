"""Configuration: TOML files validated into typed, frozen objects."""

from gateway.config.loader import MAIN_FILE, TOOLS_DIR, ConfigError, load_config
from gateway.config.models import (
    AlertRule,
    BackoffConfig,
    GatewayConfig,
    MainConfig,
    MqttConfig,
    StoreConfig,
    TagConfig,
    ToolConfig,
)

__all__ = [
    "MAIN_FILE",
    "TOOLS_DIR",
    "AlertRule",
    "BackoffConfig",
    "ConfigError",
    "GatewayConfig",
    "MainConfig",
    "MqttConfig",
    "StoreConfig",
    "TagConfig",
    "ToolConfig",
    "load_config",
]
