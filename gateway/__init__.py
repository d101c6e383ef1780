"""edge-gateway: the daemon that polls tools, scores readings and forwards over MQTT."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edge-gateway")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
