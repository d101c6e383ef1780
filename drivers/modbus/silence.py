"""Telling one silent unit from a dead link.

A link (a TCP connection, perhaps to a Modbus gateway in front of an RS-485 line,
or the serial line itself) may carry several unit ids. A unit that is switched off
or unplugged simply does not answer: on a serial line nothing else says so, and
a TCP gateway may or may not answer exception 0x0B for it. Dropping the link for
that one unit would leave every other unit on it unread through each reconnect.

The rule: a request without a reply ends the link only when the link serves a
single unit id, or when nothing at all was answered on the link since its
previous timeout (two timeouts in a row: the link, not a unit, is gone). Any
other timeout is the unit's silence: its request, and its remaining requests of
the same poll, are answered here with exception 0x0B (gateway target device
failed to respond), so that only its tags turn bad and the poll goes on.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["SILENT_UNIT", "SilenceJudge"]

SILENT_UNIT = 0x0B
"""The exception code given to the requests of a unit that did not answer."""


class SilenceJudge:
    """Decides, for one link, whether a timeout is a silent unit or a dead link.

    Args:
        unit_ids: every unit id the link's requests address.
    """

    def __init__(self, unit_ids: Iterable[int]) -> None:
        self.shared = len(set(unit_ids)) > 1
        """Whether the link serves more than one unit id."""
        # A fresh link counts as answered: a unit that is off at connect time
        # must not take the whole line down with it.
        self._answered = True

    def answered(self) -> None:
        """Note that a reply (data or exception) came in on the link."""
        self._answered = True

    def unit_is_silent(self) -> bool:
        """Judge a timeout: True for one unit's silence, False for a dead link."""
        silent = self.shared and self._answered
        self._answered = False
        return silent
