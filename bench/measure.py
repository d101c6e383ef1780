"""What the benchmarks share: CPU time and memory of a process, their figures
over a measured span, and a benchmark tool's detectors set up as the gateway's."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from edge_models.base import scorer_class
from gateway.config.models import ToolConfig

__all__ = [
    "figures",
    "memory_mib",
    "process_cpu_s",
    "run_role",
    "usage",
    "with_default_detectors",
]

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


def figures(cpu0: float, wall0: float, readings: int) -> dict[str, Any]:
    """Return this process's figures since ``usage()`` gave ``(cpu0, wall0)``.

    CPU share of one core, resident and peak MiB now, readings per second over
    the span, and the span's length in seconds.
    """
    cpu1, wall1 = usage()
    rss, peak = memory_mib()
    wall = wall1 - wall0
    return {
        "cpu": (cpu1 - cpu0) / wall,
        "rss": rss,
        "peak": peak,
        "readings_per_s": readings / wall,
        "seconds": wall,
    }


def with_default_detectors(tool: ToolConfig) -> ToolConfig:
    """Return ``tool`` with its tags' scorers configured and the tool's alert rule
    on every tag, as a tool file with no tables of its own for them gives."""
    scorers = {
        kind: scorer_class(kind).Params() for tag in tool.tags for kind in tag.scorers
    }
    rule = tool.alerts
    return tool.model_copy(
        update={
            "scorers": scorers,
            "tags": tuple(t.model_copy(update={"alerts": rule}) for t in tool.tags),
        }
    )


def run_role(script: str, role: str, options: dict[str, object]) -> dict[str, Any]:
    """Run ``script --role ROLE --OPTION VALUE ...`` in a process of its own.

    The role prints its figures as one JSON object on its last line of output;
    return it.
    """
    command = [sys.executable, script, "--role", role]
    for name, value in options.items():
        command += [f"--{name}", str(value)]
    output = subprocess.run(command, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(output.stdout.strip().splitlines()[-1])
    return result
