"""The unit file and the install script, on a scratch root.

``systemd-analyze`` (Debian package ``systemd``) checks the unit; ``.ci/run``
installs it. Where it is missing (a machine without systemd) those checks skip,
saying so. The install script runs offline against a complete wheelhouse
(:mod:`wheelhouse`) into ``--root`` folders.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from wheelhouse import build_wheelhouse

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = REPO / "systemd"
INSTALL = SYSTEMD / "install.sh"
UNIT = "edge-gateway.service"
MAX_EXPOSURE = 2.0
INSTALL_TIMEOUT_S = 300
ANALYZE_TIMEOUT_S = 60
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (Debian package systemd)",
)
needs_sysusers = pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None or shutil.which("systemctl") is None,
    reason="the install script needs systemd-sysusers and systemctl (package systemd)",
)


def install(root: Path, wheelhouse: Path, *options: str) -> str:
    """Run install.sh on ``root``; return its output (fails the test on error)."""
    # PIP_NO_COMPILE only saves the tests time; a real install compiles.
    env = dict(os.environ, PIP_NO_COMPILE="1")
    result = subprocess.run(
        [
            "bash",
            str(INSTALL),
            "--root",
            str(root),
            "--wheelhouse",
            str(wheelhouse),
            "--python",
            sys.executable,
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def ids(root: Path, name: str) -> tuple[int, int]:
    """The uid and gid of ``name`` in the tree's own passwd and group files."""
    uid = gid = -1
    for line in (root / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            uid = int(fields[2])
    for line in (root / "etc" / "group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            gid = int(fields[2])
    return uid, gid


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def exposure(root: Path) -> float:
    """``systemd-analyze security --offline`` overall exposure of the tree's unit."""
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [
            SYSTEMD_ANALYZE,
            "security",
            "--offline=true",
            f"--root={root}",
            f"--threshold={MAX_EXPOSURE * 10:.0f}",
            UNIT,
        ],
        capture_output=True,
        text=True,
        timeout=ANALYZE_TIMEOUT_S,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    return float(found.group(1))


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    return build_wheelhouse(tmp_path / "wheelhouse", tmp_path)


def check_layout(root: Path) -> None:
    """Each file is where the unit expects it, owned and protected as documented."""
    uid, gid = ids(root, "edge-gateway")
    assert uid > 0
    assert gid > 0
    passwd = (root / "etc" / "passwd").read_text()
    assert re.search(r"^edge-gateway:x:\d+:\d+:.*:/usr/sbin/nologin$", passwd, re.M)
    dialout = next(
        line
        for line in (root / "etc" / "group").read_text().splitlines()
        if line.startswith("dialout:")
    )
    assert "edge-gateway" in dialout.split(":")[3].split(",")

    config = root / "etc" / "edge-gateway"
    assert (mode(config), config.stat().st_uid, config.stat().st_gid) == (0o750, 0, gid)
    for name in ("gateway.toml", "tools/etch-07.toml"):
        file = config / name
        assert (mode(file), file.stat().st_gid) == (0o640, gid), name
        assert file.read_text() == (REPO / "config/example" / name).read_text()

    state = root / "var" / "lib" / "edge-gateway"
    assert (mode(state), state.stat().st_uid, state.stat().st_gid) == (0o750, uid, gid)

    unit = root / "etc" / "systemd" / "system" / UNIT
    assert mode(unit) == 0o644
    assert unit.read_text() == (SYSTEMD / UNIT).read_text()
    drop_in = root / "etc/systemd/system" / f"{UNIT}.d" / "serial.conf"
    assert mode(drop_in) == 0o644
    link = root / "etc/systemd/system/multi-user.target.wants" / UNIT
    assert link.is_symlink()
    assert os.readlink(link) == f"/etc/systemd/system/{UNIT}"

    venv = root / "opt/edge-gateway/venv"
    assert (mode(venv), venv.stat().st_uid) == (0o755, 0)
    command = venv / "bin/edge-gateway"
    assert mode(command) & 0o111
    on_path = root / "usr/local/bin/edge-gateway"
    assert os.readlink(on_path) == "/opt/edge-gateway/venv/bin/edge-gateway"
    version = subprocess.run(
        [str(command), "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == "0.1.0"
    assert not (root / "opt/edge-gateway/venv/bin/pip").exists()  # none at run time


def check_unit(root: Path) -> None:
    """``systemd-analyze verify`` is clean and the exposure is at most 2.0."""
    verify(root)
    assert exposure(root) <= MAX_EXPOSURE  # with the serial drop-in


def verify(root: Path) -> None:
    """``systemd-analyze verify`` of the unit installed under ``root`` is clean."""
    assert SYSTEMD_ANALYZE is not None
    # verify resolves the unit's dependencies and commands inside the root: give
    # it the system's own units and kill(1), as on the target PC.
    shutil.copytree(
        "/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True
    )
    (root / "bin").mkdir(exist_ok=True)
    shutil.copy(shutil.which("kill") or "/bin/kill", root / "bin" / "kill")
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", f"--root={root}", UNIT],
        capture_output=True,
        text=True,
        timeout=ANALYZE_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def uninstall(root: Path, *options: str) -> None:
    subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), "--uninstall", *options],
        check=True,
        capture_output=True,
        timeout=INSTALL_TIMEOUT_S,
    )


@pytest.mark.slow
@needs_sysusers
def test_install_reinstall_and_uninstall_on_a_scratch_root(
    wheels: Path, tmp_path: Path
) -> None:
    """Install lays out every file; a reinstall keeps edits; uninstall keeps data.

    ``--purge`` then removes the configuration, the data and the user.
    """
    root = tmp_path / "root"
    root.mkdir()
    install(root, wheels, "--serial")
    check_layout(root)
    if SYSTEMD_ANALYZE is not None:
        check_unit(root)

    edited = root / "etc/edge-gateway/gateway.toml"
    edited.write_text(edited.read_text().replace('id = "gw-01"', 'id = "gw-77"'))
    store = root / "var/lib/edge-gateway/gateway.db"
    store.write_bytes(b"readings")
    output = install(root, wheels)
    assert "kept existing" in output
    assert 'id = "gw-77"' in edited.read_text()

    uninstall(root)
    assert not (root / "etc/systemd/system" / UNIT).exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants" / UNIT).exists()
    assert not (root / "opt/edge-gateway").exists()
    assert not (root / "usr/local/bin/edge-gateway").is_symlink()
    assert store.read_bytes() == b"readings"
    assert 'id = "gw-77"' in edited.read_text()

    uninstall(root, "--purge")
    assert not store.exists()
    assert not edited.exists()
    assert ids(root, "edge-gateway") == (-1, -1)


@needs_analyze
def test_the_shipped_unit_is_hardened() -> None:
    """The unit in the repository alone scores at most 2.0 (offline review)."""
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", str(SYSTEMD / UNIT)],
        capture_output=True,
        text=True,
        timeout=ANALYZE_TIMEOUT_S,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE


@needs_analyze
def test_the_shipped_unit_verifies_clean(tmp_path: Path) -> None:
    """``systemd-analyze verify`` finds nothing in the unit as shipped."""
    units = tmp_path / "etc/systemd/system"
    units.mkdir(parents=True)
    shutil.copy(SYSTEMD / UNIT, units / UNIT)
    command = tmp_path / "opt/edge-gateway/venv/bin/edge-gateway"
    command.parent.mkdir(parents=True)
    command.write_text("#!/bin/sh\n")  # where install.sh puts the console script
    command.chmod(0o755)
    verify(tmp_path)


def test_install_refuses_a_wheelhouse_without_the_gateway(tmp_path: Path) -> None:
    """An incomplete copy is refused with one line, before anything is installed."""
    if shutil.which("systemd-sysusers") is None:
        pytest.skip("the install script needs systemd-sysusers (package systemd)")
    root = tmp_path / "root"
    root.mkdir()
    empty = tmp_path / "wheelhouse"
    empty.mkdir()
    result = subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), "--wheelhouse", str(empty)],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"install.sh: {empty} holds no edge_gateway-*.whl"
    assert not (root / "opt").exists()
