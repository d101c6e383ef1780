"""Modbus RTU over a serial line, through pymodbus's serial client.

A serial line carries one request at a time. Between a reply and the next request
the link keeps the line silent for the inter-frame time (3.5 character times by
default), which slow RS-485 converters need to see the frame boundary.
"""

from __future__ import annotations

import asyncio
import termios
import time
from collections.abc import Iterable, Sequence

import numpy as np
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from drivers.base import ConnectFailed, ConnectionLost
from drivers.batch import UInt8Array
from drivers.modbus.config import ModbusSettings
from drivers.modbus.errors import FrameError, RequestTimeout
from drivers.modbus.plan import Request
from drivers.modbus.silence import SILENT_UNIT, SilenceJudge

__all__ = ["RtuLink", "inter_frame_s"]

# A character on the line: start bit, data bits, parity bit, stop bits.
_START_BITS = 1
# Modbus over serial line v1.02, 2.5.1.1: above 19200 baud, fixed 1.75 ms.
_FIXED_TIMING_BAUD = 19200
_FIXED_INTER_FRAME_S = 0.00175
_CHARACTERS_PER_GAP = 3.5


def inter_frame_s(settings: ModbusSettings) -> float:
    """Return the silence kept between frames on the settings' line, seconds."""
    if settings.inter_frame_s is not None:
        return settings.inter_frame_s
    if settings.baudrate > _FIXED_TIMING_BAUD:
        return _FIXED_INTER_FRAME_S
    parity_bits = 0 if settings.parity == "N" else 1
    bits = _START_BITS + settings.bytesize + parity_bits + settings.stopbits
    return _CHARACTERS_PER_GAP * bits / settings.baudrate


class RtuLink:
    """One serial line to one or more units, for tool ``tool``."""

    def __init__(
        self, tool: str, settings: ModbusSettings, unit_ids: Iterable[int] = ()
    ) -> None:
        self.tool = tool
        self.settings = settings
        self._silence = SilenceJudge(unit_ids)
        self._gap_s = inter_frame_s(settings)
        self._last_frame = 0.0
        self._client = AsyncModbusSerialClient(
            settings.device,
            baudrate=settings.baudrate,
            bytesize=settings.bytesize,
            parity=settings.parity,
            stopbits=settings.stopbits,
            timeout=settings.request_timeout_s,
            retries=0,
            reconnect_delay=0,
        )

    async def open(self, timeout_s: float) -> None:
        """Open the serial port.

        Raises:
            ConnectFailed: the port cannot be opened in ``timeout_s``.
        """
        device = self.settings.device
        reason = "not found or busy"
        try:
            async with asyncio.timeout(timeout_s):
                connected = await self._client.connect()
        except TimeoutError:
            connected, reason = False, f"not opened within {timeout_s} s"
        except (OSError, termios.error) as exc:
            # termios refuses line settings the port cannot take (a parity a
            # USB adapter or a pseudo-terminal does not support).
            connected, reason = False, f"line settings refused: {exc}"
        if not connected:
            self._client.close()
            raise ConnectFailed(
                self.tool, f"cannot open serial port {device}: {reason}"
            )

    def close(self) -> None:
        """Close the serial port."""
        self._client.close()

    async def read(self, requests: Sequence[Request], buffer: bytearray) -> UInt8Array:
        """Send ``requests`` one by one, each reply's data into ``buffer``.

        Returns:
            Per request, the exception code it was answered with (0 = data).

        A unit that does not answer while others on the line do is silent
        (:mod:`drivers.modbus.silence`): its requests of this poll get
        ``SILENT_UNIT`` without being sent again.

        Raises:
            ConnectionLost: no reply in time (the line, not one unit), a reply of
                the wrong size, or the port failed.
        """
        exceptions = np.zeros(len(requests), dtype=np.uint8)
        silent: set[int] = set()
        for index, request in enumerate(requests):
            if request.unit_id in silent:
                exceptions[index] = SILENT_UNIT
                continue
            await self._keep_silence()
            try:
                reply = await self._exchange(request)
            except RequestTimeout:
                if not self._silence.unit_is_silent():
                    raise
                silent.add(request.unit_id)
                exceptions[index] = SILENT_UNIT
                continue
            finally:
                self._last_frame = time.monotonic()
            self._silence.answered()
            if reply.isError():
                exceptions[index] = reply.exception_code
                continue
            start = request.offset
            data = _data_bytes(reply, request)
            if len(data) != request.byte_count:
                raise FrameError(
                    self.tool,
                    f"reply to {request.describe()} on {self.settings.device} "
                    f"carries {len(data)} bytes, expected {request.byte_count}",
                )
            buffer[start : start + request.byte_count] = data
        return exceptions

    async def _keep_silence(self) -> None:
        wait = self._last_frame + self._gap_s - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    async def _exchange(self, request: Request) -> ModbusPDU:
        client = self._client
        call = {
            "coil": client.read_coils,
            "discrete_input": client.read_discrete_inputs,
            "holding": client.read_holding_registers,
            "input": client.read_input_registers,
        }[request.table]
        try:
            reply: ModbusPDU = await call(
                request.address, count=request.count, device_id=request.unit_id
            )
        except ModbusException as exc:
            if not client.connected:
                raise ConnectionLost(
                    self.tool, f"serial port {self.settings.device} failed: {exc}"
                ) from exc
            raise RequestTimeout(
                self.tool,
                f"no reply to {request.describe()} on {self.settings.device} "
                f"within {self.settings.request_timeout_s} s",
            ) from exc
        return reply


def _data_bytes(reply: ModbusPDU, request: Request) -> bytes:
    """Return a reply's data as it travelled: registers big-endian, bits packed."""
    if request.table in ("coil", "discrete_input"):
        if len(reply.bits) < request.count:
            return b""  # too short: the caller reports the size
        bits = np.asarray(reply.bits[: request.count], dtype=bool)
        return np.packbits(bits, bitorder="little").tobytes()
    return np.asarray(reply.registers, dtype=">u2").tobytes()
