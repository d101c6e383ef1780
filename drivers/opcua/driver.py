"""The OPC UA client driver: polled reads and subscriptions over one session.

Per session (:meth:`OpcUaDriver.connect`): open the secure channel with the
configured policy (the server's certificate must be in the trust folder), activate
the session with the configured identity, read the server's operation limits,
resolve every tag to a NodeId (browse paths are translated once per session),
check each node's DataType, and create one subscription per ``subscribe`` group.

:meth:`OpcUaDriver.acquire` then runs, under one task group:

- a poll loop per ``read`` group: one Read call per poll for the group's nodes,
  split to the server's ``MaxNodesPerRead``;
- a forwarder per ``subscribe`` group: each Publish response's data changes become
  one :class:`ReadingBatch` of the group (see :class:`_HeldGroup`);
- a link watch: asyncua's keep-alive probe failing, the socket closing or a
  subscription dying ends the session with :class:`ConnectionLost`.

The supervisor then marks the tags bad and reconnects with the shared backoff;
the next :meth:`connect` rebuilds everything, so a server restart heals by itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import structlog
from asyncua import Client, ua
from asyncua.common.utils import NotEnoughData
from asyncua.crypto import security_policies

from drivers.base import (
    BatchSink,
    ConnectFailed,
    ConnectionLost,
    Driver,
    DriverError,
    DriverSettings,
    PollGroup,
    TagSource,
)
from drivers.batch import (
    BAD_NO_VALUE,
    Float64Array,
    Int32Array,
    ReadingBatch,
    UInt8Array,
)
from drivers.opcua.config import OpcUaSettings, OpcUaSource, browse_names
from drivers.opcua.security import (
    CertificateError,
    Pki,
    application_uri,
    certificate_uri,
)
from drivers.opcua.values import (
    BAD_TYPE,
    NUMERIC_DATA_TYPES,
    UInt32Array,
    columns,
    quality_of,
    row_timestamp,
    status_name,
)

__all__ = ["OpcUaDriver"]

log = structlog.get_logger(__name__)
# asyncua logs each recovered oddity (revised timeouts, a keep-alive of a
# subscription being created) at WARNING through the standard library; this
# driver logs what an operator needs itself.
logging.getLogger("asyncua").setLevel(logging.ERROR)
_T = TypeVar("_T")

_POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
MS_PER_S = 1000.0
CLOSE_TIMEOUT_S = 2.0
# Batches a subscribe group may have waiting for the pipeline before the oldest is
# dropped (with an ERROR); at one per publish this is over a minute at 1 s.
SUBSCRIPTION_BACKLOG = 64
# A subscription is declared dead after this many publishing intervals of silence
# (the server sends a keep-alive at least every max_keepalive_count intervals).
KEEPALIVE_COUNT = 10
LIFETIME_COUNT = 3 * KEEPALIVE_COUNT
UNLIMITED = 0
_BAD_BIT = 31  # StatusCode severity: the top bit set is bad
_VALUE_RANK_SCALAR_OR_ANY = (-1, -2, -3)
# Status codes of a server that refuses the client's certificate. asyncua 2.1
# often surfaces that refusal as a parse error instead (NotEnoughData,
# AssertionError) because the server closes the channel without a proper fault.
_CERT_REFUSED = (
    ua.StatusCodes.BadCertificateUntrusted,
    ua.StatusCodes.BadCertificateInvalid,
    ua.StatusCodes.BadSecurityChecksFailed,
    ua.StatusCodes.BadCertificateUriInvalid,
)
_USER_REFUSED = (
    ua.StatusCodes.BadUserAccessDenied,
    ua.StatusCodes.BadIdentityTokenRejected,
    ua.StatusCodes.BadIdentityTokenInvalid,
)


@dataclass(slots=True)
class _ReadPlan:
    """What one ``read`` group asks of the server each poll."""

    group: PollGroup
    columns: Int32Array  # positions in the group of the nodes that are read
    chunks: list[list[ua.ReadValueId]]
    held_quality: UInt8Array  # per group column: quality of columns not read
    held_codes: UInt32Array


class OpcUaDriver(Driver):
    """An OPC UA server's variables, read on intervals or subscribed to.

    Raises:
        TypeError: ``settings`` or a source is not of this driver's schema.
    """

    kind: ClassVar[str] = "opcua"
    Settings: ClassVar[type[DriverSettings]] = OpcUaSettings
    Source: ClassVar[type[TagSource]] = OpcUaSource
    modes: ClassVar[frozenset[str]] = frozenset({"read", "subscribe"})

    def __init__(
        self,
        tool: str,
        settings: Any,
        tag_names: Sequence[str],
        sources: Sequence[Any],
        groups: Sequence[PollGroup],
    ) -> None:
        super().__init__(tool, settings, tag_names, sources, groups)
        self._config: OpcUaSettings = settings
        self._sources: tuple[OpcUaSource, ...] = tuple(sources)
        self._client: Client | None = None
        self._session_open = False
        self._resolved: UInt32Array = np.zeros(len(tag_names), dtype=np.uint32)
        self._lost: asyncio.Event = asyncio.Event()
        self._lost_reason = ""
        self._node_ids: list[ua.NodeId | None] = []
        self._read_plans: dict[str, _ReadPlan] = {}
        self._held: dict[str, _HeldGroup] = {}
        self._max_per_read = UNLIMITED
        self._max_per_call = UNLIMITED
        self.status_codes: UInt32Array = np.zeros(len(tag_names), dtype=np.uint32)
        """The latest OPC UA status code of each tag (0 is Good)."""

    @classmethod
    def check(
        cls,
        settings: Any,
        tag_names: Sequence[str],
        sources: Sequence[Any],
        groups: Sequence[PollGroup],
    ) -> list[tuple[str, str]]:
        """Add a pair for each ``subscriptions`` entry naming no subscribe group."""
        issues = super().check(settings, tag_names, sources, groups)
        if not isinstance(settings, OpcUaSettings):
            return issues
        subscribed = {group.name for group in groups if group.mode == "subscribe"}
        return issues + [
            (
                f"driver.subscriptions.{name}",
                f'{name!r} is not a poll group with mode = "subscribe"',
            )
            for name in settings.subscriptions
            if name not in subscribed
        ]

    # -- session -------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the session, resolve the tags and create the subscriptions.

        Raises:
            ConnectFailed: the server cannot be reached, refuses the gateway's
                certificate or identity, presents an untrusted certificate, or
                fails while the session is being set up.
        """
        config = self._config
        self._lost = asyncio.Event()
        self._lost_reason = ""
        client = Client(
            config.endpoint,
            timeout=config.request_timeout_s,
            watchdog_intervall=config.keepalive_s,
        )
        client.application_uri = config.application_uri or application_uri()
        client.name = client.description = "edge-gateway"
        client.product_uri = "urn:edge-gateway"
        client.session_timeout = int(config.session_timeout_s * MS_PER_S)
        client.connection_lost_callback = self._on_connection_lost
        self._client = client
        self._session_open = False
        try:
            async with asyncio.timeout(config.connect_timeout_s):
                await self._secure(client)
                await self._identify(client)
                await client.connect()
                self._session_open = True
                await self._read_limits(client)
                await self._resolve(client)
                await self._subscribe(client)
        except DriverError:
            raise
        except TimeoutError as exc:
            raise ConnectFailed(
                self.tool,
                f"no session with {config.endpoint} within "
                f"{config.connect_timeout_s} s",
            ) from exc
        except CertificateError as exc:
            raise ConnectFailed(self.tool, str(exc)) from exc
        except (NotEnoughData, AssertionError) as exc:
            if self._session_open:  # not the handshake: a malformed answer later
                raise ConnectFailed(
                    self.tool, f"session setup with {config.endpoint} failed: {exc!r}"
                ) from exc
            raise ConnectFailed(self.tool, self._refused_certificate()) from exc
        except ua.UaStatusCodeError as exc:
            raise ConnectFailed(self.tool, self._explain(exc.code)) from exc
        except (OSError, ua.UaError) as exc:
            raise ConnectFailed(
                self.tool, f"cannot open a session with {config.endpoint}: {exc}"
            ) from exc
        log.info(
            "opcua_session_open",
            tool=self.tool,
            endpoint=config.endpoint,
            policy=config.security_policy,
            mode=config.security_mode if config.security_policy != "None" else "None",
            identity=config.identity,
            max_nodes_per_read=self._max_per_read,
        )

    def tag_faults(self) -> dict[str, str]:
        """Tags whose last value came with a bad StatusCode, by its name.

        ``BadTypeMismatch`` marks a node this gateway does not read as a number
        (not numeric, or not the declared ``data_type``).
        """
        codes = self.status_codes
        bad = (codes >> _BAD_BIT) == 1
        bad &= codes != ua.StatusCodes.BadWaitingForInitialData
        return {
            self.tag_names[t]: status_name(int(codes[t]))
            for t in np.flatnonzero(bad).tolist()
        }

    async def close(self) -> None:
        """Close the session (bounded by a short deadline); never raises."""
        client, self._client = self._client, None
        if client is None:
            return
        if not self._session_open:
            client.disconnect_socket()
            return
        self._session_open = False
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await client.disconnect()
        except Exception as exc:  # closing a dead session must not fail the close
            log.debug("opcua_close_incomplete", tool=self.tool, error=repr(exc))
            client.disconnect_socket()

    async def _on_connection_lost(self, exc: Exception) -> None:
        self._mark_lost(f"session lost: {exc!r}")

    def _mark_lost(self, reason: str) -> None:
        if not self._lost.is_set():
            self._lost_reason = reason
            self._lost.set()

    async def _secure(self, client: Client) -> None:
        config = self._config
        if config.security_policy == "None":
            return
        pki = self._pki()
        created = await asyncio.to_thread(
            pki.ensure_certificate, client.application_uri
        )
        if created:
            log.info(
                "opcua_certificate_created", tool=self.tool, path=str(pki.certificate)
            )
        if config.application_uri is None:
            # The URI must be the one in the certificate, which may have been
            # made on a host of another name or with --uri.
            uri = await asyncio.to_thread(certificate_uri, pki.certificate)
            client.application_uri = uri or client.application_uri
        mode = getattr(ua.MessageSecurityMode, config.security_mode)
        policy = _POLICIES[config.security_policy]
        endpoints = await client.connect_and_get_server_endpoints()
        offered = [
            e
            for e in endpoints
            if e.SecurityPolicyUri == policy.URI and e.SecurityMode == mode
        ]
        if not offered:
            available = sorted(
                {
                    f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name}"
                    for e in endpoints
                }
            )
            raise ConnectFailed(
                self.tool,
                f"{config.endpoint} offers no {config.security_policy}/"
                f"{config.security_mode} endpoint (it offers {', '.join(available)})",
            )
        server_certificate = _first_certificate(offered[0].ServerCertificate)
        await asyncio.to_thread(pki.check_server, server_certificate)
        await client.set_security(
            policy,
            str(pki.certificate),
            str(pki.private_key),
            server_certificate=server_certificate,
            mode=mode,
        )

    async def _identify(self, client: Client) -> None:
        config = self._config
        if config.identity == "username":
            client.set_user(config.username or "")
            client.set_password(self._password())
        elif config.identity == "certificate":
            pki = self._pki()
            cert = config.user_certificate or pki.certificate
            key = config.user_key or pki.private_key
            try:
                await client.load_client_certificate(str(cert))
                await client.load_private_key(Path(key))
            except (OSError, ValueError) as exc:
                raise ConnectFailed(
                    self.tool, f"cannot load the user certificate {cert}: {exc}"
                ) from exc

    def _password(self) -> str:
        config = self._config
        if config.password_env is not None:
            password = os.environ.get(config.password_env)
            if password is None:
                raise ConnectFailed(
                    self.tool,
                    f"environment variable {config.password_env} (password_env) "
                    "is not set",
                )
            return password
        assert config.password_file is not None  # the schema requires one of them
        try:
            return config.password_file.read_text(encoding="utf-8").splitlines()[0]
        except (OSError, UnicodeDecodeError, IndexError) as exc:
            raise ConnectFailed(
                self.tool, f"cannot read password_file {config.password_file}: {exc}"
            ) from exc

    def _pki(self) -> Pki:
        if self._config.pki_dir is None:
            raise ConnectFailed(
                self.tool,
                "no PKI folder: set driver.pki_dir (the daemon sets it by default)",
            )
        return Pki(self._config.pki_dir)

    def _refused_certificate(self) -> str:
        config = self._config
        if config.security_policy == "None":
            return f"{config.endpoint} closed the connection during the handshake"
        return (
            f"{config.endpoint} refused the gateway's certificate "
            f"{self._pki().certificate}: add it to the server's trusted certificates "
            "(export it with `edge-gateway opcua-cert`), then retry"
        )

    def _explain(self, code: int) -> str:
        config = self._config
        name = status_name(code)
        if code in _CERT_REFUSED:
            return f"{self._refused_certificate()} ({name})"
        if code in _USER_REFUSED:
            who = config.username if config.identity == "username" else config.identity
            return f"{config.endpoint} refused the identity {who!r} ({name})"
        return f"{config.endpoint} answered {name} while opening the session"

    # -- address space -----------------------------------------------------------

    async def _read_limits(self, client: Client) -> None:
        nodes = [
            ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
            ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
        ]
        results = await client.uaclient.read_attributes(
            [ua.NodeId(n) for n in nodes], ua.AttributeIds.Value
        )
        limits = [
            int(r.Value.Value)
            if r.StatusCode is not None
            and r.StatusCode.is_good()
            and isinstance(r.Value.Value, int)
            else UNLIMITED
            for r in results
        ]
        per_read, self._max_per_call = limits
        cap = self._config.max_nodes_per_read
        if cap is not None:
            per_read = cap if per_read == UNLIMITED else min(per_read, cap)
        self._max_per_read = per_read

    async def _resolve(self, client: Client) -> None:
        """Resolve every tag's NodeId, check DataTypes, and plan the read groups."""
        codes = np.zeros(len(self._sources), dtype=np.uint32)
        node_ids: list[ua.NodeId | None] = [None] * len(self._sources)
        paths: list[int] = []
        for i, source in enumerate(self._sources):
            if source.node_id is not None:
                node_ids[i] = ua.NodeId.from_string(source.node_id)
            else:
                paths.append(i)
        if paths:
            await self._translate(client, paths, node_ids, codes)
        await self._check_types(client, node_ids, codes)
        self._node_ids = node_ids
        self._resolved = codes
        self.status_codes = codes.copy()
        self._plan_reads()

    def _plan_reads(self) -> None:
        self._read_plans = {
            g.name: self._read_plan(g, self._resolved)
            for g in self.groups
            if g.mode == "read"
        }

    def _shrink_reads(self, plan: _ReadPlan) -> bool:
        """Halve the nodes per Read after a ``BadTooManyOperations``; False at one."""
        largest = max((len(chunk) for chunk in plan.chunks), default=0)
        if largest <= 1:
            return False
        self._max_per_read = largest // 2
        log.warning(
            "opcua_read_limit_lowered",
            tool=self.tool,
            group=plan.group.name,
            max_nodes_per_read=self._max_per_read,
            reason="the server refused a Read with BadTooManyOperations",
        )
        self._plan_reads()
        return True

    async def _translate(
        self,
        client: Client,
        tags: list[int],
        node_ids: list[ua.NodeId | None],
        codes: UInt32Array,
    ) -> None:
        objects = ua.NodeId(ua.ObjectIds.ObjectsFolder)
        requests = []
        for i in tags:
            path = ua.BrowsePath()
            path.StartingNode = objects
            path.RelativePath = ua.RelativePath(
                Elements=[
                    ua.RelativePathElement(
                        # asyncua's server matches the reference type by its
                        # encoding too: the two-byte form is the one it finds.
                        ReferenceTypeId=ua.TwoByteNodeId(
                            ua.ObjectIds.HierarchicalReferences
                        ),
                        IsInverse=False,
                        IncludeSubtypes=True,
                        TargetName=name,
                    )
                    for name in browse_names(self._sources[i].browse_path or "")
                ]
            )
            requests.append(path)
        results: list[ua.BrowsePathResult] = []
        for chunk in _chunks(requests, self._max_per_call):
            results += await client.uaclient.translate_browsepaths_to_nodeids(chunk)
        for i, result in zip(tags, results, strict=True):
            if result.StatusCode.is_good() and result.Targets:
                target = result.Targets[0].TargetId
                node_ids[i] = ua.NodeId(target.Identifier, target.NamespaceIndex)
                continue
            codes[i] = result.StatusCode.value or ua.StatusCodes.BadNoMatch
            log.warning(
                "opcua_browse_path_unresolved",
                tool=self.tool,
                tag=self.tag_names[i],
                browse_path=self._sources[i].browse_path,
                status=status_name(codes[i]),
            )

    async def _check_types(
        self,
        client: Client,
        node_ids: list[ua.NodeId | None],
        codes: UInt32Array,
    ) -> None:
        tags = [i for i, node in enumerate(node_ids) if node is not None]
        nodes = [node for node in node_ids if node is not None]
        data_types = await self._read_attribute(client, nodes, ua.AttributeIds.DataType)
        ranks = await self._read_attribute(client, nodes, ua.AttributeIds.ValueRank)
        for i, data_type, rank in zip(tags, data_types, ranks, strict=True):
            status = data_type.StatusCode
            if status is not None and not status.is_good():
                # Unknown or unreadable nodes stay in the reads: the server's
                # answer per poll marks them bad with its own status code.
                self._warn_tag(i, "opcua_node_unusable", int(status.value))
                continue
            type_id = data_type.Value.Value
            value_rank = rank.Value.Value if rank.Value is not None else -1
            numeric = (
                isinstance(type_id, ua.NodeId)
                and type_id.NamespaceIndex == 0
                and type_id.Identifier in NUMERIC_DATA_TYPES
            )
            declared = self._sources[i].data_type
            if declared is not None and numeric and _type_name(type_id) != declared:
                self._refuse_type(i, node_ids, codes, type_id, declared)
                continue
            if numeric and value_rank in _VALUE_RANK_SCALAR_OR_ANY:
                continue
            codes[i] = BAD_TYPE
            node_ids[i] = None
            log.error(
                "opcua_tag_not_numeric",
                tool=self.tool,
                tag=self.tag_names[i],
                node=self._sources[i].node_id or self._sources[i].browse_path,
                data_type=_type_name(type_id),
                value_rank=value_rank,
                action="tag is read as bad (BAD_CONFIG): only Boolean, integer, "
                "Float and Double scalars are readings",
            )

    def _refuse_type(
        self,
        tag: int,
        node_ids: list[ua.NodeId | None],
        codes: UInt32Array,
        type_id: object,
        declared: str,
    ) -> None:
        codes[tag] = BAD_TYPE
        node_ids[tag] = None
        log.error(
            "opcua_tag_type_mismatch",
            tool=self.tool,
            tag=self.tag_names[tag],
            node=self._sources[tag].node_id or self._sources[tag].browse_path,
            data_type=_type_name(type_id),
            declared=declared,
            action="tag is read as bad (BAD_CONFIG) until its data_type matches",
        )

    async def _read_attribute(
        self, client: Client, nodes: list[ua.NodeId], attribute: int
    ) -> list[ua.DataValue]:
        """Read one attribute of ``nodes``, in calls of at most MaxNodesPerRead.

        A server may enforce a lower limit than it advertises: each
        ``BadTooManyOperations`` halves the calls until it takes them.
        """
        while True:
            results: list[ua.DataValue] = []
            try:
                for chunk in _chunks(nodes, self._max_per_read):
                    results += await client.uaclient.read_attributes(chunk, attribute)
            except ua.UaStatusCodeError as exc:
                largest = min(len(nodes), self._max_per_read or len(nodes))
                if exc.code != ua.StatusCodes.BadTooManyOperations or largest <= 1:
                    raise
                self._max_per_read = largest // 2
                log.warning(
                    "opcua_read_limit_lowered",
                    tool=self.tool,
                    max_nodes_per_read=self._max_per_read,
                    reason="the server refused a Read with BadTooManyOperations",
                )
            else:
                return results

    def _read_plan(self, group: PollGroup, codes: UInt32Array) -> _ReadPlan:
        readable = [
            c for c, t in enumerate(group.tags) if self._node_ids[t] is not None
        ]
        requests = []
        for c in readable:
            request = ua.ReadValueId()
            request.NodeId = self._node_ids[group.tags[c]]
            request.AttributeId = ua.AttributeIds.Value
            requests.append(request)
        tag_codes = codes[group.tag_index]
        return _ReadPlan(
            group=group,
            columns=np.asarray(readable, dtype=np.int32),
            chunks=_chunks(requests, self._max_per_read),
            held_quality=quality_of(tag_codes),
            held_codes=tag_codes,
        )

    def _warn_tag(self, tag: int, event: str, code: int) -> None:
        log.warning(
            event,
            tool=self.tool,
            tag=self.tag_names[tag],
            node=self._sources[tag].node_id or self._sources[tag].browse_path,
            status=status_name(code),
            code=f"0x{code:08X}",
        )

    # -- read groups ---------------------------------------------------------------

    async def read_group(self, group: PollGroup) -> ReadingBatch:
        """Read ``group``'s nodes: one Read call per ``MaxNodesPerRead`` of them.

        Raises:
            ConnectionLost: the session is gone, or a Read call failed as a whole.
        """
        client = self._client
        plan = self._read_plans.get(group.name)
        if client is None or plan is None:
            raise ConnectionLost(self.tool, "read without an open session")
        if self._lost.is_set():
            raise ConnectionLost(self.tool, self._lost_reason)
        try:
            answers = await asyncio.gather(
                *(self._read_chunk(client, chunk) for chunk in plan.chunks)
            )
        except ua.UaStatusCodeError as exc:
            # A server may enforce a lower limit than it advertises.
            too_many = exc.code == ua.StatusCodes.BadTooManyOperations
            if too_many and self._shrink_reads(plan):
                return await self.read_group(group)
            raise ConnectionLost(
                self.tool, f"Read of group {group.name} failed: {status_name(exc.code)}"
            ) from exc
        except (OSError, TimeoutError, ua.UaError) as exc:
            raise ConnectionLost(
                self.tool, f"Read of group {group.name} failed: {exc!r}"
            ) from exc
        receive_ns = time.time_ns()
        results = [value for answer in answers for value in answer]
        if len(results) != len(plan.columns):
            raise ConnectionLost(
                self.tool,
                f"Read of group {group.name} returned {len(results)} values for "
                f"{len(plan.columns)} nodes",
            )
        values, codes, stamps = columns(results)
        return self._batch(plan, values, codes, stamps, receive_ns)

    async def _read_chunk(
        self, client: Client, chunk: list[ua.ReadValueId]
    ) -> list[ua.DataValue]:
        params = ua.ReadParameters()
        params.MaxAge = 0
        params.TimestampsToReturn = ua.TimestampsToReturn.Both
        params.NodesToRead = chunk
        results: list[ua.DataValue] = await client.uaclient.read(params)
        return results

    def _batch(
        self,
        plan: _ReadPlan,
        values: Float64Array,
        codes: UInt32Array,
        stamps: Any,
        receive_ns: int,
    ) -> ReadingBatch:
        group = plan.group
        k = len(group.tags)
        row = np.full(k, np.nan)
        row[plan.columns] = values
        row_codes = plan.held_codes.copy()
        row_codes[plan.columns] = codes
        quality = plan.held_quality.copy()
        quality[plan.columns] = quality_of(codes)
        self._note_status(group.tag_index, row_codes)
        return ReadingBatch(
            tool=self.tool,
            group=group.name,
            timestamps=np.array([row_timestamp(stamps, receive_ns)], dtype=np.int64),
            tags=group.tag_index,
            values=row.reshape(1, k),
            quality=quality.reshape(1, k),
        )

    def _note_status(self, tags: Int32Array, codes: UInt32Array) -> None:
        """Keep each tag's status code; log a tag whose code changed."""
        previous = self.status_codes[tags]
        changed = np.flatnonzero(previous != codes)
        self.status_codes[tags] = codes
        for c in changed:
            tag, code = int(tags[c]), int(codes[c])
            if code == ua.StatusCodes.BadWaitingForInitialData:
                continue  # a subscribed item before its first value: not a fault
            if code >> 30 == 0:  # back to good
                log.info("opcua_tag_good", tool=self.tool, tag=self.tag_names[tag])
            else:
                self._warn_tag(tag, "opcua_tag_status", code)

    # -- subscribe groups ----------------------------------------------------------

    async def _subscribe(self, client: Client) -> None:
        self._held = {}
        for group in self.groups:
            if group.mode != "subscribe":
                continue
            held = _HeldGroup(self, group)
            await held.create(client)
            self._held[group.name] = held

    async def acquire(self, sink: BatchSink) -> None:
        """Run the read loops, the subscription forwarders and the link watch.

        Returns only by cancellation; raises :class:`ConnectionLost` when the
        session fails.
        """
        try:
            async with asyncio.TaskGroup() as tasks:
                prefix = f"{self.kind}[{self.tool}]"
                for group in self.groups:
                    if group.mode == "read":
                        tasks.create_task(
                            self._poll_loop(group, sink),
                            name=f"{prefix}.poll[{group.name}]",
                        )
                for name, held in self._held.items():
                    tasks.create_task(
                        held.forward(sink), name=f"{prefix}.subscription[{name}]"
                    )
                tasks.create_task(self._watch_link(), name=f"{prefix}.link")
        except* DriverError as faults:
            raise faults.exceptions[0] from None

    async def _watch_link(self) -> None:
        await self._lost.wait()
        raise ConnectionLost(self.tool, self._lost_reason)


class _HeldGroup:
    """A ``subscribe`` group: one OPC UA subscription, its items and held values.

    Every Publish response becomes one batch with all the group's columns. A
    column that did not change keeps its last value and quality (OPC UA reports
    changes only; an unchanged value is still the current one). A column that
    never reported is NaN with ``BAD_NO_VALUE``. With a queue size above 1, an
    item may report several values in one response; the batch then has one row
    per depth: row ``r`` applies every item's ``r``-th change.
    """

    def __init__(self, driver: OpcUaDriver, group: PollGroup) -> None:
        self.driver = driver
        self.group = group
        self.options = driver._config.subscriptions.get(group.name)
        k = len(group.tags)
        self.values = np.full(k, np.nan)
        self.quality = np.full(k, BAD_NO_VALUE, dtype=np.uint8)
        self.codes = np.full(k, ua.StatusCodes.BadWaitingForInitialData, np.uint32)
        self.backlog: asyncio.Queue[ReadingBatch] = asyncio.Queue(SUBSCRIPTION_BACKLOG)
        self.dropped = 0
        # Changes that arrive while the items are still being created wait here,
        # so that a refused item is already bad in the first batch.
        self._early: list[tuple[list[int], list[ua.DataValue], int]] | None = []

    async def create(self, client: Client) -> None:
        """Create the subscription and its monitored items on the server."""
        driver, group, options = self.driver, self.group, self.options
        publishing_s = (options and options.publishing_interval_s) or group.interval_s
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = publishing_s * MS_PER_S
        params.RequestedMaxKeepAliveCount = KEEPALIVE_COUNT
        params.RequestedLifetimeCount = LIFETIME_COUNT
        params.MaxNotificationsPerPublish = 0
        params.PublishingEnabled = True
        result = await client.uaclient.create_subscription(params, self.on_publish)
        subscription_id = result.SubscriptionId

        requests = [
            self._item(column, node)
            for column, tag in enumerate(group.tags)
            if (node := driver._node_ids[tag]) is not None
        ]
        refused = [c for c, t in enumerate(group.tags) if driver._node_ids[t] is None]
        for column in refused:
            self._set_bad(column, int(driver.status_codes[group.tags[column]]))
        for chunk in _chunks(requests, driver._max_per_call):
            create = ua.CreateMonitoredItemsParameters()
            create.SubscriptionId = subscription_id
            create.TimestampsToReturn = ua.TimestampsToReturn.Both
            create.ItemsToCreate = chunk
            results = await client.uaclient.create_monitored_items(create)
            for request, item in zip(chunk, results, strict=True):
                if not item.StatusCode.is_good():
                    column = request.RequestedParameters.ClientHandle
                    self._set_bad(column, int(item.StatusCode.value))
                    driver._warn_tag(
                        group.tags[column],
                        "opcua_monitored_item_refused",
                        int(item.StatusCode.value),
                    )
        driver._note_status(group.tag_index, self.codes)
        early, self._early = self._early or [], None
        for handles, values, receive_ns in early:
            self._enqueue(self._batch(handles, values, receive_ns))

    def _item(self, column: int, node: ua.NodeId) -> ua.MonitoredItemCreateRequest:
        options, group = self.options, self.group
        sampling_s = group.interval_s
        if options is not None and options.sampling_interval_s is not None:
            sampling_s = options.sampling_interval_s
        item = ua.MonitoredItemCreateRequest()
        item.ItemToMonitor = ua.ReadValueId(
            NodeId=node, AttributeId=ua.AttributeIds.Value
        )
        item.MonitoringMode = ua.MonitoringMode.Reporting
        parameters = ua.MonitoringParameters()
        parameters.ClientHandle = column  # the column is the handle: no lookup
        parameters.SamplingInterval = sampling_s * MS_PER_S
        parameters.QueueSize = options.queue_size if options else 1
        parameters.DiscardOldest = True
        if options is not None and options.deadband != "none":
            deadband = ua.DataChangeFilter()
            deadband.Trigger = ua.DataChangeTrigger.StatusValue
            deadband.DeadbandType = (
                ua.DeadbandType.Absolute
                if options.deadband == "absolute"
                else ua.DeadbandType.Percent
            )
            deadband.DeadbandValue = options.deadband_value
            parameters.Filter = deadband
        item.RequestedParameters = parameters
        return item

    def _set_bad(self, column: int, code: int) -> None:
        self.values[column] = np.nan
        self.codes[column] = code
        self.quality[column] = quality_of(np.array([code], dtype=np.uint32))[0]

    def on_publish(self, result: ua.PublishResult) -> None:
        """Turn one Publish response's notifications into one batch (or none)."""
        receive_ns = time.time_ns()
        data = result.NotificationMessage.NotificationData or []
        handles: list[int] = []
        values: list[ua.DataValue] = []
        for notification in data:
            if isinstance(notification, ua.DataChangeNotification):
                for item in notification.MonitoredItems:
                    handles.append(item.ClientHandle)
                    values.append(item.Value)
            elif isinstance(notification, ua.StatusChangeNotification):
                code = notification.Status.value
                self.driver._mark_lost(
                    f"subscription of group {self.group.name} ended: "
                    f"{status_name(code)}"
                )
        if not handles:
            return
        if self._early is not None:
            self._early.append((handles, values, receive_ns))
            return
        self._enqueue(self._batch(handles, values, receive_ns))

    def _batch(
        self, handles: list[int], results: list[ua.DataValue], receive_ns: int
    ) -> ReadingBatch | None:
        value, codes, stamps = columns(results)
        quality = quality_of(codes)
        column = np.asarray(handles, dtype=np.intp)
        # The handles are the columns this driver gave; drop any a server invents.
        known = (column >= 0) & (column < len(self.group.tags))
        if not known.all():
            value, codes, stamps = value[known], codes[known], stamps[known]
            quality, column = quality[known], column[known]
            if not column.size:
                return None
        depth = _occurrence(column)
        rows = int(depth.max()) + 1
        k = len(self.group.tags)
        out_values = np.empty((rows, k))
        out_quality = np.empty((rows, k), dtype=np.uint8)
        timestamps = np.empty(rows, dtype=np.int64)
        for r in range(rows):
            at = depth == r
            self.values[column[at]] = value[at]
            self.quality[column[at]] = quality[at]
            self.codes[column[at]] = codes[at]
            out_values[r] = self.values
            out_quality[r] = self.quality
            timestamps[r] = row_timestamp(stamps[at], receive_ns)
        # Rows of one response are in order; never let a later one go back in time.
        np.maximum.accumulate(timestamps, out=timestamps)
        self.driver._note_status(self.group.tag_index, self.codes)
        return ReadingBatch(
            tool=self.driver.tool,
            group=self.group.name,
            timestamps=timestamps,
            tags=self.group.tag_index,
            values=out_values,
            quality=out_quality,
        )

    def _enqueue(self, batch: ReadingBatch | None) -> None:
        if batch is None:
            return
        if self.backlog.full():
            self.backlog.get_nowait()
            self.dropped += 1
            log.error(
                "opcua_subscription_backlog_full",
                tool=self.driver.tool,
                group=self.group.name,
                dropped_batches=self.dropped,
            )
        self.backlog.put_nowait(batch)

    async def forward(self, sink: BatchSink) -> None:
        """Hand the group's batches to ``sink`` as they arrive; runs until cancelled."""
        stats = self.driver.stats
        while True:
            batch = await self.backlog.get()
            stats.polls += 1
            stats.readings += batch.size
            stats.last_poll_ns = time.time_ns()
            await sink(batch)


def _occurrence(column: np.ndarray[Any, np.dtype[np.intp]]) -> Int32Array:
    """Return, per element, how many earlier elements have the same value."""
    order = np.argsort(column, kind="stable")
    ordered = column[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(ordered)]))
    depth = np.empty(len(column), dtype=np.int32)
    depth[order] = np.arange(len(ordered)) - run_start
    return depth


def _chunks(items: list[_T], size: int) -> list[list[_T]]:
    if size == UNLIMITED or len(items) <= size:
        return [items] if items else []
    return [items[i : i + size] for i in range(0, len(items), size)]


def _first_certificate(chain: bytes) -> bytes:
    """Return the first DER certificate of a chain (a server may send several)."""
    # DER: 0x30, then the length; long form 0x82 is followed by two length bytes.
    if len(chain) > 4 and chain[0] == 0x30 and chain[1] == 0x82:
        return chain[: 4 + int.from_bytes(chain[2:4], "big")]
    return chain


def _type_name(type_id: object) -> str:
    if isinstance(type_id, ua.NodeId) and type_id.NamespaceIndex == 0:
        name = ua.ObjectIdNames.get(type_id.Identifier)
        if name:
            return str(name)
    return str(type_id)
