"""Service figures: start to READY, status round trip, reload, stop, memory.

Runs ``edge-gateway run`` as systemd would (a notify socket in the environment)
on simulated tools, and prints:

- seconds from process start to ``READY=1``;
- the status socket's round trip (``edge-gateway status`` without the Python
  start-up), median and p99;
- seconds from SIGHUP to ``READY=1`` when one tool of many changed;
- seconds from SIGTERM to exit (no broker configured);
- resident memory once running.

    python bench/service.py [--tools 20] [--requests 200]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway.config import load_config
from gateway.control import query_status

MAIN = """
[gateway]
site = "bench"
id = "gw"

[store]
path = "{store}"

[mqtt]
enabled = false

[logging]
format = "json"
level = "warning"
"""

TOOL = """
[driver]
kind = "simulated"
seed = {seed}

[[poll_groups]]
name = "fast"
interval_s = 0.1
tags = ["a", "b", "c", "d"]

[[tags]]
name = "a"
source = {{ level = {level}, noise = 0.1 }}

[[tags]]
name = "b"
source = {{ level = 2.0, noise = 0.1 }}

[[tags]]
name = "c"
source = {{ level = 3.0, noise = 0.1 }}

[[tags]]
name = "d"
source = {{ level = 4.0, noise = 0.1 }}
"""
TIMEOUT_S = 60.0
PERCENT_99 = 0.99


def write_config(folder: Path, tools: int) -> Path:
    config = folder / "config"
    (config / "tools").mkdir(parents=True)
    (config / "gateway.toml").write_text(MAIN.format(store=folder / "gateway.db"))
    for n in range(tools):
        (config / "tools" / f"tool-{n:03d}.toml").write_text(
            TOOL.format(seed=n, level=1.0)
        )
    return config


def wait_for(sock: socket.socket, field: str) -> float:
    """Block until a datagram starting with ``field`` arrives; return its time."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        data = sock.recv(4096).decode()
        if data.split("\n", 1)[0] == field:
            return time.monotonic()
    raise TimeoutError(f"no {field} within {TIMEOUT_S} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tools", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="egb-", dir="/tmp"))
    try:
        config = write_config(folder, args.tools)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(folder / "notify"))
        notify.settimeout(TIMEOUT_S)
        started = time.monotonic()
        daemon = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
            env={"NOTIFY_SOCKET": str(folder / "notify"), "PATH": "/usr/bin:/bin"},
            stdout=subprocess.DEVNULL,
        )
        try:
            ready = wait_for(notify, "READY=1") - started
            time.sleep(3.0)
            socket_path = load_config(config).status_socket
            rounds = []
            for _ in range(args.requests):
                t0 = time.perf_counter()
                report = query_status(socket_path)
                rounds.append(time.perf_counter() - t0)
            rss = report["process"]["rss_bytes"]

            (config / "tools" / "tool-000.toml").write_text(
                TOOL.format(seed=0, level=9.0)
            )
            hup = time.monotonic()
            daemon.send_signal(signal.SIGHUP)
            wait_for(notify, "RELOADING=1")
            reload_s = wait_for(notify, "READY=1") - hup

            term = time.monotonic()
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(TIMEOUT_S)
            stop_s = time.monotonic() - term
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
        rounds.sort()
        p99 = rounds[min(len(rounds) - 1, int(PERCENT_99 * len(rounds)))]
        print(f"tools: {args.tools} simulated, 4 tags each every 0.1 s")
        print(f"start to READY=1:        {ready:6.2f} s")
        print(
            f"status round trip:       {statistics.median(rounds) * 1e3:6.2f} ms "
            f"median, {p99 * 1e3:.2f} ms p99 ({args.requests} requests)"
        )
        print(f"reload, one tool changed: {reload_s:5.2f} s (SIGHUP to READY=1)")
        print(f"SIGTERM to exit:         {stop_s:6.2f} s (exit code {code})")
        print(f"resident memory:         {rss / 1e6:6.1f} MB")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
