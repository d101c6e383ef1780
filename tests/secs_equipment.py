"""An independent GEM equipment for interoperability tests: secsgem's handler.

Run as ``python tests/secs_equipment.py PORT``. It listens (HSMS passive) on
127.0.0.1:PORT with the variables, events and alarms below, prints ``ready`` and
then obeys one command per line on stdin:

- ``event CEID``: trigger the collection event;
- ``set ALID`` / ``clear ALID``: set or clear the alarm;
- ``sv SVID VALUE``: change a status variable's value;
- ``quit``: stop at once (also what the end of stdin does).

After each command it prints ``done <command>``. secsgem is pure Python with its own
threads, so it runs in its own process beside the asyncio gateway under test.
"""

from __future__ import annotations

import logging
import os
import sys

import secsgem.common
import secsgem.gem
import secsgem.hsms
import secsgem.secs

SVID_PRESSURE = 10
SVID_FLOW = 11
DVID_WAFER = 2001
CEID_PROCESS_STARTED = 50
CEID_ALARM_SET = 60
CEID_ALARM_CLEARED = 61
ALID_PRESSURE = 7
PRESSURE = 45.5
FLOW = 8.25
WAFER = 12
T3_S = 4


def build(port: int) -> secsgem.gem.GemEquipmentHandler:
    """The equipment: two status variables, one data value, events and an alarm."""
    settings = secsgem.hsms.HsmsSettings(
        address="127.0.0.1",
        port=port,
        connect_mode=secsgem.hsms.HsmsConnectMode.PASSIVE,
        device_type=secsgem.common.DeviceType.EQUIPMENT,
    )
    handler = secsgem.gem.GemEquipmentHandler(settings)
    handler.settings.timeouts.t3 = T3_S
    variables = secsgem.secs.variables
    for svid, name, unit, value in (
        (SVID_PRESSURE, "ChamberPressure", "mTorr", PRESSURE),
        (SVID_FLOW, "HeliumFlow", "sccm", FLOW),
    ):
        sv = secsgem.gem.StatusVariable(svid, name, unit, variables.F8, False)
        sv.value = value
        handler.status_variables[svid] = sv
    dv = secsgem.gem.DataValue(DVID_WAFER, "WaferCount", variables.U4, False)
    dv.value = WAFER
    handler.data_values[DVID_WAFER] = dv
    for ceid, name, dvids in (
        (CEID_PROCESS_STARTED, "ProcessStarted", [DVID_WAFER, SVID_PRESSURE]),
        (CEID_ALARM_SET, "AlarmSet", []),
        (CEID_ALARM_CLEARED, "AlarmCleared", []),
    ):
        handler.collection_events[ceid] = secsgem.gem.CollectionEvent(ceid, name, dvids)
    handler.alarms[ALID_PRESSURE] = secsgem.gem.Alarm(
        ALID_PRESSURE,
        "PressureHigh",
        "Chamber pressure high",
        secsgem.secs.data_items.ALCD.PARAMETER_CONTROL_ERROR,
        CEID_ALARM_SET,
        CEID_ALARM_CLEARED,
    )
    return handler


def main() -> int:
    """Serve until ``quit`` or the end of stdin."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    handler = build(int(sys.argv[1]))
    handler.enable()
    print("ready", flush=True)
    for line in sys.stdin:
        command = line.split()
        if not command:
            continue
        if command[0] == "quit":
            break
        if command[0] == "event":
            handler.trigger_collection_events([int(command[1])])
        elif command[0] == "set":
            handler.set_alarm(int(command[1]))
        elif command[0] == "clear":
            handler.clear_alarm(int(command[1]))
        elif command[0] == "sv":
            handler.status_variables[int(command[1])].value = float(command[2])
        print("done", *command, flush=True)
    print("stopping", flush=True)
    # secsgem 0.3.0's passive disable() never returns once its accept thread has
    # died, and its T3 timers are non-daemon threads: leave without waiting.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
