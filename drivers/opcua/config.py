"""Schemas of an OPC UA tool file: the ``[driver]`` table and each tag's ``source``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from asyncua import ua
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.base import DriverSettings, TagSource

__all__ = [
    "NUMERIC_TYPES",
    "OpcUaSettings",
    "OpcUaSource",
    "SecurityPolicyName",
    "SubscriptionSettings",
]

# TOML has no path type: a path is a string, which strict mode alone would refuse.
ConfigPath = Annotated[Path, Field(strict=False)]
SecurityPolicyName = Literal[
    "None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"
]

NUMERIC_TYPES = (
    "Boolean",
    "SByte",
    "Byte",
    "Int16",
    "UInt16",
    "Int32",
    "UInt32",
    "Int64",
    "UInt64",
    "Float",
    "Double",
)
"""The OPC UA built-in types read as numbers (Boolean as 0/1)."""
_NOT_NUMERIC = (
    "String",
    "DateTime",
    "ByteString",
    "LocalizedText",
    "Guid",
    "XmlElement",
)
MAX_TIMEOUT_S = 300.0
MAX_QUEUE_SIZE = 10_000


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, allow_inf_nan=False
    )


class SubscriptionSettings(_Strict):
    """``[driver.subscriptions.<group>]``: a subscribe group's monitored items.

    Attributes:
        publishing_interval_s: how often the server sends the changes it collected;
            default the group's ``interval_s``.
        sampling_interval_s: how often the server samples each node; default the
            group's ``interval_s``.
        queue_size: values the server keeps per node between publishes (1 keeps
            the latest only).
        deadband: ``"none"``, ``"absolute"`` (changes smaller than
            ``deadband_value`` in the tag's raw units are not sent) or
            ``"percent"`` (of the node's EURange; the server must support it).
        deadband_value: the deadband's size.
    """

    publishing_interval_s: float | None = Field(default=None, gt=0, le=86_400)
    sampling_interval_s: float | None = Field(default=None, ge=0, le=86_400)
    queue_size: int = Field(default=1, ge=1, le=MAX_QUEUE_SIZE)
    deadband: Literal["none", "absolute", "percent"] = "none"
    deadband_value: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _percent_range(self) -> SubscriptionSettings:
        if self.deadband == "percent" and self.deadband_value > 100:
            raise ValueError("deadband_value is a percentage: at most 100")
        return self


class OpcUaSettings(DriverSettings):
    """The ``[driver]`` table of an OPC UA tool.

    Security is on unless ``security_policy = "None"`` is written out. With a
    policy, the gateway's certificate comes from ``pki_dir`` (created on first
    use) and the server's must be in ``pki_dir/trusted``.

    Attributes:
        kind: ``"opcua"``.
        endpoint: the server's URL, ``opc.tcp://host:port[/path]``.
        security_policy: ``"Basic256Sha256"`` (default), ``"Aes128_Sha256_RsaOaep"``,
            ``"Aes256_Sha256_RsaPss"`` or ``"None"``.
        security_mode: ``"SignAndEncrypt"`` (default) or ``"Sign"``.
        identity: ``"anonymous"``, ``"username"`` or ``"certificate"`` (the
            gateway's own certificate, or ``user_certificate``/``user_key``).
        username: the user name of the username identity.
        password_file: a file holding the password (first line), or
        password_env: the environment variable holding it.
        user_certificate: certificate (DER or PEM) of the certificate identity.
        user_key: its private key (PEM).
        pki_dir: the PKI folder; default ``$STATE_DIRECTORY/pki``, else ``pki/``
            beside the store database.
        application_uri: the gateway's application URI; default
            ``urn:<host>:edge-gateway`` (it is written into the certificate).
        connect_timeout_s: bound of the whole connect sequence, seconds.
        request_timeout_s: bound of one service call, seconds.
        keepalive_s: how often an idle session is probed; a failed probe ends it.
        session_timeout_s: session lifetime the server keeps without traffic.
        max_nodes_per_read: cap on nodes per Read call, below the server's own
            operation limit (which is read from the server and always obeyed).
        subscriptions: per ``subscribe`` group name, its monitored-item options.
    """

    kind: Literal["opcua"]
    endpoint: str = Field(pattern=r"^opc\.tcp://[^/\s:]+(:\d{1,5})?(/\S*)?$")
    security_policy: SecurityPolicyName = "Basic256Sha256"
    security_mode: Literal["Sign", "SignAndEncrypt"] = "SignAndEncrypt"
    identity: Literal["anonymous", "username", "certificate"] = "anonymous"
    username: str | None = None
    password_file: ConfigPath | None = None
    password_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    user_certificate: ConfigPath | None = None
    user_key: ConfigPath | None = None
    pki_dir: ConfigPath | None = None
    application_uri: str | None = None
    connect_timeout_s: float = Field(default=10.0, gt=0, le=MAX_TIMEOUT_S)
    request_timeout_s: float = Field(default=5.0, gt=0, le=MAX_TIMEOUT_S)
    keepalive_s: float = Field(default=5.0, ge=0.1, le=MAX_TIMEOUT_S)
    session_timeout_s: float = Field(default=60.0, ge=1, le=86_400)
    max_nodes_per_read: int | None = Field(default=None, ge=1)
    subscriptions: dict[str, SubscriptionSettings] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _identity_complete(self) -> OpcUaSettings:
        if self.identity == "username":
            if not self.username:
                raise ValueError('identity = "username" needs username')
            if (self.password_file is None) == (self.password_env is None):
                raise ValueError(
                    'identity = "username" needs exactly one of password_file, '
                    "password_env"
                )
        if (self.user_certificate is None) != (self.user_key is None):
            raise ValueError("user_certificate and user_key must be given together")
        if self.identity == "certificate" and self.security_policy == "None":
            raise ValueError(
                'identity = "certificate" needs a security_policy other than "None"'
            )
        return self


class OpcUaSource(TagSource):
    """A tag's ``source``: the node it reads, by NodeId or by browse path.

    Attributes:
        node_id: a NodeId string, such as ``ns=2;s=Chamber.Pressure`` or
            ``ns=3;i=1001``.
        browse_path: browse names from the Objects folder, separated by ``/``,
            each ``<namespace index>:<name>``, such as ``2:Litho03/2:Stage/2:TempC``.
        data_type: the node's expected type, one of :data:`NUMERIC_TYPES`
            (optional; a node of another type is read as bad ``BAD_CONFIG``).
    """

    node_id: str | None = None
    browse_path: str | None = None
    data_type: str | None = None

    @field_validator("node_id")
    @classmethod
    def _node_id_parses(cls, node_id: str | None) -> str | None:
        if node_id is not None:
            try:
                ua.NodeId.from_string(node_id)
            except (ValueError, ua.UaError) as exc:
                raise ValueError(
                    f"{node_id!r} is not a NodeId such as 'ns=2;s=Chamber.Pressure' "
                    f"or 'ns=3;i=1001' ({exc})"
                ) from None
        return node_id

    @field_validator("browse_path")
    @classmethod
    def _browse_path_parses(cls, path: str | None) -> str | None:
        if path is not None:
            browse_names(path)
        return path

    @field_validator("data_type")
    @classmethod
    def _numeric(cls, data_type: str | None) -> str | None:
        if data_type is None or data_type in NUMERIC_TYPES:
            return data_type
        if data_type in _NOT_NUMERIC or data_type.endswith("[]"):
            raise ValueError(
                f"{data_type} values are not numeric readings: this gateway reads "
                "Boolean, integer, Float and Double scalars only"
            )
        raise ValueError(f"must be one of {', '.join(NUMERIC_TYPES)}")

    @model_validator(mode="after")
    def _one_address(self) -> OpcUaSource:
        if (self.node_id is None) == (self.browse_path is None):
            raise ValueError("give exactly one of node_id, browse_path")
        return self


def browse_names(path: str) -> list[ua.QualifiedName]:
    """Split a browse path into qualified names.

    Raises:
        ValueError: a segment is empty or its namespace index is not a number.
    """
    names = []
    for segment in path.strip("/").split("/"):
        index, colon, name = segment.partition(":")
        if not colon:
            index, name = "0", segment
        if not name or not index.isdigit():
            raise ValueError(
                f"segment {segment!r} of {path!r} is not '<namespace index>:<name>'"
            )
        names.append(ua.QualifiedName(name, int(index)))
    return names
