"""``edge-gateway demo``: the newcomer's first run shows alerts arriving over MQTT."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

DEMO_SECONDS = 30
DEMO_TIMEOUT_S = 90


@pytest.mark.slow
def test_demo_prints_alerts_and_summaries_received_over_mqtt() -> None:
    """Within 30 s the demo's subscriber receives alerts and summaries, and exits 0."""
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed: the demo would run store-only")
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "demo", "--duration", str(DEMO_SECONDS)],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("ALERT raised") for line in lines)
    assert any(line.startswith("summary etch-07/fast") for line in lines)
    assert "status  online" in result.stdout
    assert "status  offline" in result.stdout
