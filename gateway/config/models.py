"""Typed, frozen configuration objects: the schema of the main file and tool files.

Field names are the TOML keys. Every model forbids unknown keys and is strict (a
string is never read as a number). Cross-field rules that name a key raise
:class:`ValueError` from a validator; the loader turns every failure into one line
naming the file, the key path and the rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

__all__ = [
    "AlertRule",
    "BackoffConfig",
    "GatewayConfig",
    "GatewayIdentity",
    "LoggingConfig",
    "MainConfig",
    "ModelConfig",
    "MqttConfig",
    "PipelineConfig",
    "PollGroupConfig",
    "ServiceConfig",
    "StoreConfig",
    "TagConfig",
    "TlsConfig",
    "ToolConfig",
]

Identifier = str  # validated by ID_PATTERN where used
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
STATUS_SOCKET_NAME = "status.sock"
Severity = Literal["info", "warning", "critical"]
# TOML has no path type: a path is a string, which strict mode alone would refuse.
ConfigPath = Annotated[Path, Field(strict=False)]


class Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, allow_inf_nan=False
    )


class GatewayIdentity(Model):
    """``[gateway]``: who this gateway is, as it appears in topics and payloads."""

    site: str = Field(pattern=ID_PATTERN)
    id: str = Field(pattern=ID_PATTERN)


class StoreConfig(Model):
    """``[store]``: the local SQLite database and its limits."""

    path: ConfigPath = Path("gateway.db")
    commit_interval_ms: int = Field(default=250, ge=1, le=10_000)
    max_bytes: int = Field(default=2_000_000_000, ge=1_000_000)
    max_age_days: float = Field(default=30.0, gt=0)
    value_format: Literal["float32", "float64"] = "float32"
    compression_level: int = Field(default=3, ge=1, le=19)
    retention_check_s: float = Field(default=60.0, gt=0)


class TlsConfig(Model):
    """``[mqtt.tls]``: TLS to the broker; the server certificate is verified."""

    enabled: bool = False
    ca_file: ConfigPath | None = None
    cert_file: ConfigPath | None = None
    key_file: ConfigPath | None = None
    verify: bool = True

    @model_validator(mode="after")
    def _client_pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class BackoffConfig(Model):
    """Reconnect delays: exponential from ``initial_s`` to ``max_s``, jittered."""

    initial_s: float = Field(default=0.5, gt=0, le=60)
    max_s: float = Field(default=30.0, gt=0, le=3600)
    multiplier: float = Field(default=2.0, ge=1.0, le=10.0)
    jitter: float = Field(default=0.2, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> BackoffConfig:
        if self.max_s < self.initial_s:
            raise ValueError("max_s must not be less than initial_s")
        return self


class MqttConfig(Model):
    """``[mqtt]``: the broker the gateway publishes to."""

    enabled: bool = True
    host: str = "localhost"
    port: int = Field(default=1883, ge=1, le=65535)
    protocol: Literal["3.1.1", "5"] = "5"
    client_id: str = ""
    topic_prefix: str = Field(default="edge", pattern=r"^[^#+]+$")
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    username: str | None = None
    password: SecretStr | None = None
    max_inflight: int = Field(default=20, ge=1, le=1000)
    telemetry: bool = False
    tls: TlsConfig = TlsConfig()
    backoff: BackoffConfig = BackoffConfig()
    shutdown_publish_s: float = Field(default=3.0, ge=0, le=60)


class LoggingConfig(Model):
    """``[logging]``: level and format of the log on stdout (the journal)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class PipelineConfig(Model):
    """``[pipeline]``: summaries and the bound on batches waiting to be processed."""

    summary_window_s: float = Field(default=60.0, ge=1, le=3600)
    queue_batches: int = Field(default=256, ge=1, le=100_000)


class ServiceConfig(Model):
    """``[service]``: how the daemon runs as a service and watches itself.

    ``runtime_dir`` holds the status socket (``status.sock``, owner and group
    only) that ``edge-gateway status`` asks; the installed service sets it to
    the unit's ``RuntimeDirectory``, ``/run/edge-gateway``. Left out, the
    socket sits beside the store, so every configuration folder has its own.
    ``metrics_port`` serves Prometheus text on 127.0.0.1
    (0, the default, serves nothing). The daemon logs a WARNING when its
    resident memory, outbox backlog or pipeline queue pass ``warn_fraction`` of
    their limits: ``memory_limit_mb`` (the unit's ``MemoryMax``),
    ``backlog_limit_messages`` and ``pipeline.queue_batches``. The store is not
    among them: it runs at ``store.max_bytes`` by design, evicting the oldest
    raw readings first and logging each eviction.
    """

    runtime_dir: ConfigPath | None = None
    metrics_port: int = Field(default=0, ge=0, le=65535)
    memory_limit_mb: int = Field(default=1024, ge=64, le=1_048_576)
    backlog_limit_messages: int = Field(default=100_000, ge=100)
    warn_fraction: float = Field(default=0.8, gt=0, le=1)


class MainConfig(Model):
    """The main file, ``gateway.toml``."""

    gateway: GatewayIdentity
    store: StoreConfig = StoreConfig()
    mqtt: MqttConfig = MqttConfig()
    logging: LoggingConfig = LoggingConfig()
    pipeline: PipelineConfig = PipelineConfig()
    reconnect: BackoffConfig = BackoffConfig()
    service: ServiceConfig = ServiceConfig()


class AlertRule(Model):
    """When a tag's score raises and clears an alert (``[alerts]``, per tag too).

    An alert is raised after ``raise_after`` consecutive scored samples at or over
    ``raise_level`` and cleared after ``clear_after`` consecutive samples under
    ``clear_level``. After a clear, no new alert is raised on the same tag for
    ``cooldown_s``. The alert is ``critical`` when the score reached
    ``critical_level`` while it was being raised, else ``severity``.
    """

    raise_level: float = Field(default=1.0, gt=0)
    clear_level: float = Field(default=0.5, ge=0)
    raise_after: int = Field(default=3, ge=1, le=10_000)
    clear_after: int = Field(default=5, ge=1, le=10_000)
    cooldown_s: float = Field(default=30.0, ge=0)
    severity: Severity = "warning"
    critical_level: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _levels(self) -> AlertRule:
        if self.clear_level > self.raise_level:
            raise ValueError("clear_level must not exceed raise_level")
        if self.critical_level is not None and self.critical_level < self.raise_level:
            raise ValueError("critical_level must not be below raise_level")
        return self


class TagConfig(Model):
    """One ``[[tags]]`` entry: a tool variable and how it is processed.

    The engineering value is ``raw * scale + offset``; readings outside
    ``limits`` (engineering units) are stored with quality ``BAD_OUT_OF_RANGE``
    and not scored. After loading, ``alerts`` is the tag's :class:`AlertRule` (the
    tool's ``[alerts]`` with this tag's keys over it) and ``source`` is the
    driver's validated ``Source`` model.
    """

    name: str = Field(pattern=ID_PATTERN)
    unit: str = ""
    description: str = ""
    scale: float = 1.0
    offset: float = 0.0
    limits: tuple[float, float] | None = None
    scorers: tuple[str, ...] = ("ewma", "level")
    telemetry: bool = False
    alerts: Any = Field(default_factory=dict)
    source: Any = Field(default_factory=dict)

    # A field validator, so that the error's location is the ``limits`` key.
    @field_validator("limits")
    @classmethod
    def _limits_ordered(
        cls, limits: tuple[float, float] | None
    ) -> tuple[float, float] | None:
        if limits is not None and limits[0] >= limits[1]:
            raise ValueError(
                f"must be [low, high] with low < high, got [{limits[0]}, {limits[1]}]"
            )
        return limits


class PollGroupConfig(Model):
    """One ``[[poll_groups]]`` entry: tags acquired together.

    ``mode = "read"`` (the default) polls the group every ``interval_s``;
    ``"subscribe"`` lets the tool push the group's values (OPC UA monitored items,
    SECS/GEM event reports), with ``interval_s`` as the sampling interval asked
    for. A driver that cannot subscribe refuses such a group at load time.
    """

    name: str = Field(pattern=ID_PATTERN)
    mode: Literal["read", "subscribe"] = "read"
    interval_s: float = Field(gt=0, le=86_400)
    tags: tuple[str, ...] = Field(min_length=1)


class ModelConfig(Model):
    """One ``[[models]]`` entry: a scorer over some of a poll group's tags.

    ``name`` names its alerts (the alert's ``tag`` for a multivariate model).
    ``tags`` defaults to every tag of ``group``. With ``file``, the fitted model is
    loaded from that model file (relative paths from the configuration folder);
    without, it is fitted on the group's first ``fit_rows`` rows. After loading,
    ``params`` is the scorer's validated ``Params`` and ``file`` is absolute.
    """

    name: str = Field(pattern=ID_PATTERN)
    kind: str
    group: str
    tags: tuple[str, ...] = ()
    file: ConfigPath | None = None
    params: Any = Field(default_factory=dict)


class ToolConfig(Model):
    """A tool file, ``tools/<id>.toml``.

    After loading, ``driver`` is the driver's validated ``Settings`` model (its
    ``kind`` names the driver) and ``scorers`` maps each scorer used by the tool's
    tags to its validated ``Params``. ``models`` left out means the default stack
    (:mod:`gateway.detector`) on every poll group; ``models = []`` means none.
    """

    id: str = Field(pattern=ID_PATTERN)
    description: str = ""
    enabled: bool = True
    driver: Any
    alerts: AlertRule = AlertRule()
    scorers: dict[str, Any] = Field(default_factory=dict)
    fit_rows: int = Field(default=400, ge=10, le=1_000_000)
    models: tuple[ModelConfig, ...] | None = None
    poll_groups: tuple[PollGroupConfig, ...] = Field(min_length=1)
    tags: tuple[TagConfig, ...] = Field(min_length=1)

    @property
    def kind(self) -> str:
        """The driver kind, as the ``[driver]`` table's ``kind`` names it."""
        return str(self.driver.kind)

    @property
    def readings_per_s(self) -> float:
        """Readings per second the tool's poll groups produce at their intervals."""
        return sum(len(g.tags) / g.interval_s for g in self.poll_groups)


class GatewayConfig(Model):
    """Everything loaded from one configuration folder."""

    directory: Path
    main: MainConfig
    tools: tuple[ToolConfig, ...]

    @property
    def store_path(self) -> Path:
        """The database path, relative paths taken from the configuration folder."""
        path = self.main.store.path
        return path if path.is_absolute() else self.directory / path

    @property
    def status_socket(self) -> Path:
        """The daemon's status socket, relative paths taken from the folder."""
        folder = self.main.service.runtime_dir
        if folder is None:
            return self.store_path.parent / STATUS_SOCKET_NAME
        folder = folder if folder.is_absolute() else self.directory / folder
        return folder / STATUS_SOCKET_NAME
