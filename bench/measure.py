"""What the benchmarks measure of a process: CPU time, resident memory."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

__all__ = ["memory_mib", "process_cpu_s", "usage"]

KIB = 1024
MIB = 1024 * 1024


def usage() -> tuple[float, float]:
    """Return (CPU seconds of the whole process, monotonic seconds)."""
    rusage = resource.getrusage(resource.RUSAGE_SELF)
    return rusage.ru_utime + rusage.ru_stime, time.monotonic()


def memory_mib() -> tuple[float, float]:
    """Return (resident MiB now, peak resident MiB) of this process."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * KIB / MIB
    return fields["VmRSS"], fields["VmHWM"]


def process_cpu_s(pid: int) -> float:
    """Return the CPU seconds (user + system) another process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14, 15
    return ticks / os.sysconf("SC_CLK_TCK")
