"""Where the gateway keeps protocol certificates: the default PKI folder.

``$STATE_DIRECTORY/pki`` when the service manager sets ``STATE_DIRECTORY`` (systemd
does, from ``StateDirectory=``), else ``pki/`` beside the store database. A driver
whose settings have a ``pki_dir`` left unset gets this folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gateway.config.models import GatewayConfig

__all__ = ["STATE_ENV", "default_pki_dir", "with_default_pki"]

STATE_ENV = "STATE_DIRECTORY"
PKI_FOLDER = "pki"


def default_pki_dir(config: GatewayConfig) -> Path:
    """Return the gateway's default PKI folder for ``config`` (module doc)."""
    # systemd may list several state directories, separated by colons.
    state = os.environ.get(STATE_ENV, "").split(":")[0]
    if state:
        return Path(state) / PKI_FOLDER
    return config.store_path.resolve().parent / PKI_FOLDER


def with_default_pki(settings: Any, config: GatewayConfig) -> Any:
    """Return driver ``settings`` with an unset ``pki_dir`` set to the default."""
    if "pki_dir" in type(settings).model_fields and settings.pki_dir is None:
        return settings.model_copy(update={"pki_dir": default_pki_dir(config)})
    return settings
