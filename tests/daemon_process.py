"""The daemon as a child process, and the configuration folders it runs on.

Unix socket paths must fit in 108 bytes, so service tests keep their sockets in
a short folder under /tmp (:func:`short_tempdir`) rather than in pytest's
``tmp_path``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mosquitto import wait_until

__all__ = [
    "Daemon",
    "run_cli",
    "short_tempdir",
    "write_main",
    "write_tool",
]

EXIT_TIMEOUT_S = 20.0
CLI_TIMEOUT_S = 30.0

MAIN = """
[gateway]
site = "fab-s"
id = "gw-s"

[store]
path = "{store}"
commit_interval_ms = 100

[mqtt]
{mqtt}

[mqtt.backoff]
initial_s = 0.1
max_s = 0.5

[reconnect]
initial_s = 0.05
max_s = 0.3

[pipeline]
summary_window_s = 1

[service]
{service}

[logging]
format = "json"
"""

TOOL = """
[driver]
kind = "simulated"
seed = {seed}
{driver}

[[driver.faults]]
kind = "spike"
tag = "pressure"
at_s = 1.0
duration_s = 0.5
magnitude = 40.0
repeat_s = 2.0

[alerts]
raise_after = 2
clear_after = 2
cooldown_s = 0.2

[scorers.ewma]
warmup = 5

[[poll_groups]]
name = "fast"
interval_s = {interval}
tags = ["pressure", "flow"]

[[tags]]
name = "pressure"
unit = "mTorr"
source = {{ level = {level}, noise = 0.2 }}

[[tags]]
name = "flow"
unit = "sccm"
source = {{ level = 10.0, noise = 0.1 }}
"""


@contextmanager
def short_tempdir() -> Iterator[Path]:
    """A fresh folder with a short path, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="egs-", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_main(
    config: Path, store: Path, mqtt: str = "enabled = false", service: str = ""
) -> Path:
    """Write ``config/gateway.toml`` (and the tools folder); return ``config``."""
    (config / "tools").mkdir(parents=True, exist_ok=True)
    text = MAIN.format(store=store, mqtt=mqtt, service=service)
    (config / "gateway.toml").write_text(text)
    return config


def write_tool(
    config: Path,
    tool: str,
    *,
    seed: int = 1,
    level: float = 50.0,
    interval_s: float = 0.1,
    driver: str = "",
) -> Path:
    """Write ``config/tools/<tool>.toml``, a two-tag simulated tool; return it."""
    path = config / "tools" / f"{tool}.toml"
    path.write_text(
        TOOL.format(seed=seed, level=level, interval=interval_s, driver=driver)
    )
    return path


class Daemon:
    """``edge-gateway run --config DIR`` as a child process logging JSON to a file."""

    def __init__(
        self, config: Path, log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.config = config
        self.log = log
        environ = dict(os.environ)
        environ.update(env or {})
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=environ,
            )

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        return self.process.pid

    def send(self, signum: signal.Signals) -> None:
        """Send ``signum`` to the daemon."""
        self.process.send_signal(signum)

    def stop(self, timeout: float = EXIT_TIMEOUT_S) -> int:
        """SIGTERM, then wait; return the exit code."""
        self.send(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL if still running (cleanup)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log line so far, parsed, oldest first."""
        if not self.log.exists():
            return []
        lines = self.log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def named(self, event: str) -> list[dict[str, Any]]:
        """The log events named ``event``."""
        return [e for e in self.events() if e["event"] == event]

    def wait_for(self, event: str, count: int = 1, timeout: float = 20.0) -> None:
        """Wait until the log holds ``count`` events named ``event``."""

        def seen() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"daemon exited {self.process.returncode}:\n"
                    + self.log.read_text()[-3000:]
                )
            return len(self.named(event)) >= count

        wait_until(seen, timeout=timeout, what=f"{count} x {event}")


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``edge-gateway ARGS`` and return the finished process (text output)."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=check,
    )
