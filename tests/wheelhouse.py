"""A complete wheelhouse built offline, for the install script's tests.

``build-wheelhouse.sh`` fetches wheels from the package index; the tests must
not need the network. The same set is made from this environment instead: the
gateway's own wheel is built from a copy of the source tree, and every runtime
dependency (and pip) is packed back into a wheel from its installed files, which
on this machine are exactly what its wheel held.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

__all__ = ["build_wheelhouse"]

SOURCE = Path(__file__).resolve().parent.parent
PROJECT = "edge-gateway"
# Installer bookkeeping that is not part of a wheel.
_NOT_IN_WHEEL = {"INSTALLER", "REQUESTED", "direct_url.json"}
BUILD_TIMEOUT_S = 120


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _runtime_closure(project: str) -> list[str]:
    """Names of the distributions ``project`` needs at run time, transitively."""
    seen: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [(project, frozenset())]
    while todo:
        name, extras = todo.pop()
        key = _key(name)
        if key in seen:
            continue
        seen.add(key)
        for text in metadata.distribution(name).requires or []:
            requirement = Requirement(text)
            wanted = requirement.marker is None or any(
                requirement.marker.evaluate({"extra": extra}) for extra in (*extras, "")
            )
            if wanted:
                todo.append((requirement.name, frozenset(requirement.extras)))
    seen.discard(_key(project))
    return sorted(seen)


def _compressed(tags: list[str]) -> str:
    """The file name's tag set: py2-none-any and py3-none-any give py2.py3-none-any."""
    if not tags:
        return "py3-none-any"
    parts = [tag.split("-") for tag in tags]
    return "-".join(
        ".".join(dict.fromkeys(part[i] for part in parts)) for i in range(3)
    )


def _repack(name: str, out: Path) -> Path:
    dist = metadata.distribution(name)
    tags = [
        line.split(": ", 1)[1]
        for line in (dist.read_text("WHEEL") or "").splitlines()
        if line.startswith("Tag:")
    ]
    stem = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    wheel = out / f"{stem}-{dist.version}-{_compressed(tags)}.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as archive:
        for entry in dist.files or []:
            path = Path(str(dist.locate_file(entry)))
            parts = entry.parts
            if (
                ".." in parts
                or entry.suffix == ".pyc"
                or parts[-1] in _NOT_IN_WHEEL
                or not path.is_file()
            ):
                continue
            archive.write(path, str(entry))
    return wheel


def _build_project(out: Path, scratch: Path) -> None:
    tree = scratch / "source"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(SOURCE / name, tree / name)
    for package in ("gateway", "drivers", "edge_models"):
        shutil.copytree(
            SOURCE / package,
            tree / package,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(tree),
        ],
        check=True,
        capture_output=True,
        timeout=BUILD_TIMEOUT_S,
    )


def build_wheelhouse(out: Path, scratch: Path) -> Path:
    """Fill ``out`` with the gateway's wheel, its dependencies' and pip's."""
    out.mkdir(parents=True, exist_ok=True)
    _build_project(out, scratch)
    for name in (*_runtime_closure(PROJECT), "pip"):
        _repack(name, out)
    return out
