"""A simulated tool's OPC UA server (asyncua), for the demo and the tests.

Each tag of the tool file becomes a variable at the address its ``source`` gives:
the NodeId (namespaces are registered up to the index it names) or the browse path
(objects are created along it). Every ``step_s`` of the simulation the variables
are written with the signal generator's values, quality mapped to a StatusCode, and
the sampling instant as source timestamp. A ``disconnect`` fault stops the server
for its duration and starts it again, as a tool's server restart would.

Security follows the tool's ``[driver]`` table: with a policy, the server gets a
fresh certificate, and :meth:`OpcUaSimulator.driver_settings` points the gateway at
a PKI folder that already trusts it (unless ``trust_server`` is false). With
``identity = "username"``, the server accepts that user and password only.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import structlog
from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole

from drivers.base import DriverSettings
from drivers.batch import GOOD, UNCERTAIN, is_bad
from drivers.opcua.config import OpcUaSettings, OpcUaSource, browse_names
from drivers.opcua.security import Pki, create_certificate
from drivers.simulation import Simulation, ToolSimulator

if TYPE_CHECKING:
    from gateway.config.models import ToolConfig

__all__ = ["OpcUaSimulator"]

log = structlog.get_logger(__name__)

_VARIANTS = {
    "Boolean": ua.VariantType.Boolean,
    "SByte": ua.VariantType.SByte,
    "Byte": ua.VariantType.Byte,
    "Int16": ua.VariantType.Int16,
    "UInt16": ua.VariantType.UInt16,
    "Int32": ua.VariantType.Int32,
    "UInt32": ua.VariantType.UInt32,
    "Int64": ua.VariantType.Int64,
    "UInt64": ua.VariantType.UInt64,
    "Float": ua.VariantType.Float,
    "Double": ua.VariantType.Double,
}
_POLICY_TYPES = {
    ("Basic256Sha256", "Sign"): ua.SecurityPolicyType.Basic256Sha256_Sign,
    ("Basic256Sha256", "SignAndEncrypt"): (
        ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt
    ),
    ("Aes128_Sha256_RsaOaep", "Sign"): ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    ("Aes128_Sha256_RsaOaep", "SignAndEncrypt"): (
        ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt
    ),
    ("Aes256_Sha256_RsaPss", "Sign"): ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
    ("Aes256_Sha256_RsaPss", "SignAndEncrypt"): (
        ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt
    ),
}
NAMESPACE_PREFIX = "urn:edge-gateway:simulator:"
_STATUS_UNCERTAIN = ua.StatusCodes.UncertainLastUsableValue
_STATUS_BAD = ua.StatusCodes.BadSensorFailure
_NOT_READABLE = ua.StatusCodes.BadNotReadable
# asyncua logs every request and the harmless warnings listed in the protocol
# notes at INFO/WARNING; the simulator's own log says what matters.
_QUIET_LOGGERS = ("asyncua",)


class OpcUaSimulator(ToolSimulator):
    """An OPC UA server serving a :class:`Simulation` as the tool file's nodes.

    Args:
        tool: the tool file (its ``[driver]`` table must be ``kind = "opcua"``).
        simulation: the signals and faults.
        host, port: where to listen; port 0 picks a free one, kept across
            restarts.
        trust_server: whether the PKI folder handed to the gateway trusts the
            server's certificate already.
        max_nodes_per_read: the operation limit to advertise and enforce
            (a larger Read is refused with ``BadTooManyOperations``).
        update: whether to write new values every ``step_s`` (tests that write
            values themselves turn it off).
    """

    kind: ClassVar[str] = "opcua"

    def __init__(
        self,
        tool: ToolConfig,
        simulation: Simulation,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        trust_server: bool = True,
        max_nodes_per_read: int | None = None,
        update: bool = True,
    ) -> None:
        super().__init__(tool, simulation, host, port)
        if not isinstance(tool.driver, OpcUaSettings):
            raise TypeError(f"{tool.id}: the OPC UA simulator needs an opcua tool")
        self.settings: OpcUaSettings = tool.driver
        self.sources: tuple[OpcUaSource, ...] = tuple(t.source for t in tool.tags)
        self.trust_server = trust_server
        self.max_nodes_per_read = max_nodes_per_read
        self.update = update
        self.read_requests = 0
        """Read calls that asked for at least one of the tool's variables."""
        self.nodes: list[ua.NodeId] = []
        """The tool's variables, in tag order."""
        self.server: Server | None = None
        self._workdir = Path(tempfile.mkdtemp(prefix=f"opcua-sim-{tool.id}-"))
        self._variants: list[ua.VariantType] = []
        self._unreadable: set[ua.NodeId] = set()
        self._serving = False
        self._updater: asyncio.Task[None] | None = None
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)

    @property
    def endpoint(self) -> str:
        """The server's endpoint URL."""
        return f"opc.tcp://{self.host}:{self.port}/"

    @property
    def pki(self) -> Pki:
        """The gateway-side PKI folder :meth:`driver_settings` points at."""
        if self.settings.pki_dir is not None:
            return Pki(self.settings.pki_dir)
        return Pki(self._workdir / "gateway-pki")

    @property
    def server_certificate(self) -> Path:
        """The server's certificate (DER), once started with security."""
        return self._workdir / "server" / "cert.der"

    async def start(self) -> None:
        """Build the address space, start serving, and start the value updates."""
        if self.port == 0:
            self.port = _free_port(self.host)
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(f"{self.tool.id} (simulated)")
        await self._secure(server)
        await self._build(server)
        self.server = server
        await self._serve()
        await self._limit_reads(server)
        await self.write_values()
        if self.update:
            self._updater = asyncio.create_task(
                self._update_loop(), name=f"opcua-sim[{self.tool.id}].update"
            )
        log.info("opcua_simulator_started", tool=self.tool.id, endpoint=self.endpoint)

    async def stop(self) -> None:
        """Stop updating and serving; must not raise."""
        if self._updater is not None:
            self._updater.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._updater
            self._updater = None
        with contextlib.suppress(Exception):
            await self._halt()
        shutil.rmtree(self._workdir, ignore_errors=True)

    async def restart(self, down_s: float = 0.0) -> None:
        """Stop serving (every session drops), wait ``down_s``, serve again.

        The address space, the port and the simulation clock are kept, as a
        tool's server comes back with the same configuration.
        """
        await self._halt()
        await asyncio.sleep(down_s)
        await self._serve()

    async def halt(self) -> None:
        """Stop serving until :meth:`resume` (a server outage of any length)."""
        await self._halt()

    async def resume(self) -> None:
        """Serve again after :meth:`halt`."""
        await self._serve()

    def driver_settings(self) -> DriverSettings:
        """Return the tool's settings with the endpoint (and PKI) of this server."""
        update: dict[str, Any] = {"endpoint": self.endpoint}
        if self.settings.security_policy != "None" and self.settings.pki_dir is None:
            update["pki_dir"] = self.pki.root
        return self.settings.model_copy(update=update)

    async def write_values(self) -> None:
        """Write the simulation's current values to the variables."""
        server = self.server
        if server is None:
            return
        values, quality = self.sample_now()
        now = datetime.datetime.now(datetime.UTC)
        bad = is_bad(quality)
        for i, node in enumerate(self.nodes):
            status = GOOD
            if bad[i] or not np.isfinite(values[i]):
                status = _STATUS_BAD
            elif quality[i] == UNCERTAIN:
                status = _STATUS_UNCERTAIN
            variant = (
                ua.Variant(None, ua.VariantType.Null)
                if status == _STATUS_BAD
                else _variant(float(values[i]), self._variants[i])
            )
            await server.write_attribute_value(
                node,
                ua.DataValue(
                    variant,
                    StatusCode=ua.StatusCode(status),
                    SourceTimestamp=now,
                    ServerTimestamp=now,
                ),
            )

    async def set_value(self, tag: str, value: float, status: int = 0) -> None:
        """Write one tag's variable now (``status`` an OPC UA StatusCode value)."""
        server = self.server
        if server is None:
            raise RuntimeError("the simulator is not started")
        i = self._tag_index(tag)
        now = datetime.datetime.now(datetime.UTC)
        variant = (
            ua.Variant(None, ua.VariantType.Null)
            if status >> 31
            else _variant(value, self._variants[i])
        )
        await server.write_attribute_value(
            self.nodes[i],
            ua.DataValue(
                variant,
                StatusCode=ua.StatusCode(status),
                SourceTimestamp=now,
                ServerTimestamp=now,
            ),
        )

    async def set_readable(self, tag: str, readable: bool) -> None:
        """Grant or withdraw read access to one tag's variable.

        asyncua's server does not check the AccessLevel attribute on Read; the
        simulator does, answering ``BadNotReadable`` as a tool's server would.
        """
        server = self.server
        if server is None:
            raise RuntimeError("the simulator is not started")
        node = self.nodes[self._tag_index(tag)]
        level = ua.AccessLevel.CurrentRead.mask if readable else 0
        for attribute in (ua.AttributeIds.AccessLevel, ua.AttributeIds.UserAccessLevel):
            await server.write_attribute_value(
                node, ua.DataValue(ua.Variant(level, ua.VariantType.Byte)), attribute
            )
        if readable:
            self._unreadable.discard(node)
        else:
            self._unreadable.add(node)

    def _tag_index(self, tag: str) -> int:
        for i, config in enumerate(self.tool.tags):
            if config.name == tag:
                return i
        raise KeyError(f"{self.tool.id} has no tag {tag!r}")

    # -- internals -----------------------------------------------------------------

    async def _secure(self, server: Server) -> None:
        settings = self.settings
        if settings.security_policy == "None":
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            key = (settings.security_policy, settings.security_mode)
            server.set_security_policy([_POLICY_TYPES[key]])
            uri = f"{NAMESPACE_PREFIX}{self.tool.id}"
            await server.set_application_uri(uri)
            cert, private_key = await asyncio.to_thread(
                create_certificate,
                uri,
                socket.gethostname(),
                True,
                f"{self.tool.id} simulator",
            )
            folder = self.server_certificate.parent
            folder.mkdir(parents=True, exist_ok=True)
            self.server_certificate.write_bytes(cert)
            (folder / "key.pem").write_bytes(private_key)
            await server.load_certificate(str(self.server_certificate))
            await server.load_private_key(str(folder / "key.pem"))
            if self.trust_server:
                pki = self.pki
                pki.create_folders()
                trusted = pki.trusted_dir / f"{self.tool.id}-simulator.der"
                trusted.write_bytes(cert)
        tokens: list[type] = [ua.AnonymousIdentityToken]
        if settings.identity == "username":
            server.iserver.user_manager = _PasswordUsers(
                settings.username or "", _password(settings)
            )
            tokens = [ua.UserNameIdentityToken]
        elif settings.identity == "certificate":
            tokens = [ua.X509IdentityToken]
        server.set_identity_tokens(tokens)

    async def _build(self, server: Server) -> None:
        namespace = await server.register_namespace(f"{NAMESPACE_PREFIX}{self.tool.id}")
        root = await server.nodes.objects.add_object(
            ua.NodeId(self.tool.id, namespace),
            ua.QualifiedName(self.tool.id, namespace),
        )
        folders: dict[tuple[str, ...], Any] = {}
        for source in self.sources:
            variant = _VARIANTS[source.data_type or "Double"]
            self._variants.append(variant)
            initial = _variant(0.0, variant)
            if source.node_id is not None:
                node_id = ua.NodeId.from_string(source.node_id)
                await _ensure_namespace(server, node_id.NamespaceIndex)
                name = ua.QualifiedName(str(node_id.Identifier), node_id.NamespaceIndex)
                variable = await root.add_variable(node_id, name, initial, variant)
            else:
                names = browse_names(source.browse_path or "")
                parent = server.nodes.objects
                for depth, qualified in enumerate(names[:-1]):
                    await _ensure_namespace(server, qualified.NamespaceIndex)
                    path = tuple(n.to_string() for n in names[: depth + 1])
                    if path not in folders:
                        folders[path] = await parent.add_object(
                            ua.NodeId("/".join(path), qualified.NamespaceIndex),
                            qualified,
                        )
                    parent = folders[path]
                last = names[-1]
                await _ensure_namespace(server, last.NamespaceIndex)
                node_id = ua.NodeId(source.browse_path, last.NamespaceIndex)
                variable = await parent.add_variable(node_id, last, initial, variant)
            self.nodes.append(variable.nodeid)

    async def _limit_reads(self, server: Server) -> None:
        limit = self.max_nodes_per_read
        if limit is not None:
            await server.write_attribute_value(
                ua.NodeId(
                    ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead
                ),
                ua.DataValue(ua.Variant(limit, ua.VariantType.UInt32)),
            )
        service = server.iserver.attribute_service
        read: Callable[[ua.ReadParameters], list[ua.DataValue]] = service.read
        tool_nodes = set(self.nodes)

        def counted_read(params: ua.ReadParameters) -> list[ua.DataValue]:
            requested = params.NodesToRead
            if any(r.NodeId in tool_nodes for r in requested):
                self.read_requests += 1
            if limit is not None and len(requested) > limit:
                raise ua.uaerrors.BadTooManyOperations()
            results = read(params)
            if self._unreadable:
                denied = ua.DataValue(StatusCode=ua.StatusCode(_NOT_READABLE))
                for i, request in enumerate(requested):
                    value = request.AttributeId == ua.AttributeIds.Value
                    if value and request.NodeId in self._unreadable:
                        results[i] = denied
            return results

        service.read = counted_read

    async def _serve(self) -> None:
        if self.server is not None and not self._serving:
            await self.server.start()
            self._serving = True

    async def _halt(self) -> None:
        if self.server is not None and self._serving:
            self._serving = False
            await self.server.stop()

    async def _update_loop(self) -> None:
        # Updates keep a fixed cadence on the monotonic clock: writing many nodes
        # takes time, and sleeping a whole step after it would stretch the step.
        step = self.simulation.step_s
        start = time.monotonic()
        tick = 0
        while True:
            tick = max(tick + 1, int((time.monotonic() - start) // step) + 1)
            await asyncio.sleep(max(0.0, start + tick * step - time.monotonic()))
            down = self.disconnected()
            if down and self._serving:
                log.info("opcua_simulator_disconnect", tool=self.tool.id)
                await self._halt()
            elif not down and not self._serving:
                await self._serve()
            if self._serving:
                try:
                    await self.write_values()
                except Exception:  # one failed update must not end the simulation
                    log.exception("opcua_simulator_update_failed", tool=self.tool.id)


class _PasswordUsers:
    """Accepts one user name and password; refuses everyone else."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self.password = password

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username == self.username and password == self.password:
            return User(role=UserRole.User)
        return None


def _password(settings: OpcUaSettings) -> str:
    if settings.password_env is not None:
        return os.environ.get(settings.password_env, "")
    if settings.password_file is not None:
        return settings.password_file.read_text(encoding="utf-8").splitlines()[0]
    return ""


async def _ensure_namespace(server: Server, index: int) -> None:
    while len(await server.get_namespace_array()) <= index:
        count = len(await server.get_namespace_array())
        await server.register_namespace(f"{NAMESPACE_PREFIX}extra:{count}")


def _variant(value: float, variant: ua.VariantType) -> ua.Variant:
    if variant == ua.VariantType.Boolean:
        return ua.Variant(value >= 0.5, variant)
    if variant in (ua.VariantType.Float, ua.VariantType.Double):
        return ua.Variant(value, variant)
    return ua.Variant(round(value), variant)


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
