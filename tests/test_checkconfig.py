"""Tests of ``edge-gateway check-config``, and of ``run`` refusing a broken folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from drivers import DRIVER_KINDS
from gateway.cli import main

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config" / "example"
DEMO = REPO / "config" / "demo"
PASSWORD_VARIABLE = "EDGE_GATEWAY_MQTT_PASSWORD"
SECRET = "s3cret-Pa55"
SCRIPT_TIMEOUT_S = 60


def broken_demo(directory: Path) -> Path:
    """Copy the demo folder to ``directory`` and break one key in three files."""
    folder = shutil.copytree(DEMO, directory / "demo")
    for path, old, new in [
        ("gateway.toml", "port = 1883", "port = 0"),
        ("tools/cvd-02.toml", "interval_s = 0.5", 'interval_s = "fast"'),
        ("tools/etch-07.toml", 'kind = "hsms"', 'kind = "opcua-x"'),
    ]:
        text = (folder / path).read_text(encoding="utf-8")
        assert text.count(old) == 1
        (folder / path).write_text(text.replace(old, new), encoding="utf-8")
    return folder


BROKEN_ISSUES = [
    "gateway.toml: mqtt.port: must be >= 1, got 0",
    'tools/cvd-02.toml: poll_groups[0].interval_s: must be a number, got "fast"',
    f"tools/etch-07.toml: driver.kind: must be one of {', '.join(DRIVER_KINDS)}, "
    'got "opcua-x"',
]


def test_example_is_valid_and_summarised(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped example checks out and its summary estimates 11.6 readings/s."""
    monkeypatch.setenv(PASSWORD_VARIABLE, SECRET)

    assert main(["check-config", str(EXAMPLE)]) == 0

    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == f"configuration {EXAMPLE}: valid"
    assert "gateway fab1/gw-01, store /var/lib/edge-gateway/gateway.db" in lines
    assert "mqtt broker.example.internal:8883 (MQTT 5, TLS), prefix 'edge'" in lines
    assert "  group fast: 2 tags every 1 s" in lines
    assert "  group slow: 1 tags every 10 s" in lines
    assert "  group beam: 2 tags every 1 s" in lines  # implant-04, over HSMS
    assert "  group loop: 5 tags every 2 s" in lines  # chiller-03, over Modbus
    assert "  group dose: 3 tags every 1 s" in lines  # litho-05, over OPC UA
    assert lines[-1] == "4 tool(s), 18 tag(s), estimated 11.6 readings/s"
    assert SECRET not in out


def test_example_needs_its_password_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The example's env: password fails the check until its variable is set."""
    monkeypatch.delenv(PASSWORD_VARIABLE, raising=False)

    assert main(["check-config", str(EXAMPLE)]) == 2

    assert capsys.readouterr().err.splitlines() == [
        f"gateway.toml: mqtt.password: environment variable {PASSWORD_VARIABLE} "
        "is not set",
        f"1 problem(s) in {EXAMPLE}",
    ]


def test_demo_is_valid_and_summarised(capsys: pytest.CaptureFixture[str]) -> None:
    """The demo folder checks out: three tools, 14 tags, 26 readings/s."""
    assert main(["check-config", str(DEMO)]) == 0

    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == f"configuration {DEMO}: valid"
    tools = [line.split() for line in lines if line.endswith(".0")]
    assert tools == [
        ["cvd-02", "modbus", "4", "1", "8.0"],
        ["etch-07", "hsms", "5", "2", "8.0"],
        ["litho-03", "opcua", "5", "2", "10.0"],
    ]
    assert lines[-1] == "3 tool(s), 14 tag(s), estimated 26.0 readings/s"


def test_disabled_tool_adds_no_readings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A disabled tool is listed as such and counts no readings in the estimate."""
    folder = shutil.copytree(DEMO, tmp_path / "demo")
    tool = folder / "tools" / "cvd-02.toml"
    tool.write_text("enabled = false\n" + tool.read_text(encoding="utf-8"))

    assert main(["check-config", str(folder)]) == 0

    lines = capsys.readouterr().out.splitlines()
    [row] = [line for line in lines if line.startswith("cvd-02 ")]
    assert row.endswith(" 0.0  (disabled)")
    assert lines[-1] == "3 tool(s), 14 tag(s), estimated 18.0 readings/s"


def test_config_folder_from_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a folder argument, check-config reads EDGE_GATEWAY_CONFIG."""
    monkeypatch.setenv("EDGE_GATEWAY_CONFIG", str(DEMO))

    assert main(["check-config"]) == 0

    assert capsys.readouterr().out.startswith(f"configuration {DEMO}: valid\n")


def test_broken_folder_prints_every_issue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broken folder exits 2 and prints each issue on its own stderr line."""
    folder = broken_demo(tmp_path)

    assert main(["check-config", str(folder)]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [*BROKEN_ISSUES, f"3 problem(s) in {folder}"]


def test_missing_folder_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder that does not exist exits 2, naming what is missing."""
    folder = tmp_path / "absent"

    assert main(["check-config", str(folder)]) == 2

    assert capsys.readouterr().err.splitlines() == [
        "gateway.toml: file not found",
        "tools: folder of tool files is missing",
        f"2 problem(s) in {folder}",
    ]


def test_run_refuses_a_broken_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The daemon does not start on a broken folder: it prints the issues, exits 2."""
    folder = broken_demo(tmp_path)

    assert main(["run", "--config", str(folder)]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == BROKEN_ISSUES


def test_console_script_checks_the_demo() -> None:
    """The installed edge-gateway command validates the demo folder and exits 0."""
    script = Path(sys.executable).with_name("edge-gateway")
    assert script.is_file(), f"console script not installed next to {sys.executable}"

    done = subprocess.run(
        [str(script), "check-config", str(DEMO)],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == (
        "3 tool(s), 14 tag(s), estimated 26.0 readings/s"
    )


def test_console_script_exits_2_on_a_broken_folder(tmp_path: Path) -> None:
    """Run as a program on a broken folder, check-config exits 2, issues on stderr."""
    folder = broken_demo(tmp_path)

    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check-config", str(folder)],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        check=False,
    )

    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines()[:-1] == BROKEN_ISSUES
