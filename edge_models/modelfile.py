"""Model files: a fitted scorer and its streaming state in one ``.npz`` archive.

The archive holds the scorer's :meth:`~edge_models.base.Scorer.parameters` under
``p.NAME``, its :meth:`~edge_models.base.Scorer.state` under ``s.NAME``, and a
``header`` entry: the UTF-8 bytes (a ``uint8`` array) of a JSON object ::

    {"format": "edge-models/1", "kind": "pca", "params": {...}, "k": 8,
     "tags": ["chamber_pressure", ...], "created": "2025-01-31T08:00:00+00:00"}

Nothing is pickled: files are read with ``allow_pickle=False``, so a model file
carries numbers and names only and cannot run code when loaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from edge_models.base import Scorer, scorer_class

__all__ = ["FORMAT", "FORMAT_VERSION", "ModelFileError", "load_model", "save_model"]

FORMAT_NAME = "edge-models"
FORMAT_VERSION = 1
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"

_HEADER = "header"
_PARAMETER_PREFIX = "p."
_STATE_PREFIX = "s."
_HEADER_KEYS = ("format", "kind", "params", "k", "tags", "created")


class ModelFileError(ValueError):
    """A model file that cannot be loaded; the message names the file and why.

    Attributes:
        path: the model file.
        reason: what is wrong with it, one line.
    """

    def __init__(self, path: Path, reason: str) -> None:
        # Messages from numpy or a scorer may span lines; an operator reads one.
        self.path = path
        self.reason = " ".join(reason.split())
        super().__init__(f"model file {path}: {self.reason}")


def save_model(
    path: str | os.PathLike[str], scorer: Scorer, tags: Sequence[str]
) -> None:
    """Write ``scorer`` (parameters, state, params) fitted on columns ``tags``.

    The file is written to a temporary file in the same directory and renamed
    over ``path``, so a reader sees the old file or the new one, never a part.

    Raises:
        ValueError: ``scorer`` needs fitting and is not fitted, or ``tags`` are
            not ``scorer.k`` distinct names.
        OSError: the file cannot be written.
    """
    path = Path(path)
    tags = tuple(tags)
    if not scorer.fitted:
        raise ValueError(f"cannot save {scorer.name} scorer to {path}: not fitted")
    if len(tags) != scorer.k or len(set(tags)) != len(tags):
        raise ValueError(
            f"cannot save {scorer.name} scorer to {path}: needs {scorer.k} "
            f"distinct tags, got {list(tags)}"
        )

    header = {
        "format": FORMAT,
        "kind": scorer.name,
        "params": scorer.params.model_dump(mode="json"),
        "k": scorer.k,
        "tags": list(tags),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    arrays: dict[str, npt.NDArray[Any]] = {
        _HEADER: np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    }
    arrays |= {_PARAMETER_PREFIX + k: v for k, v in scorer.parameters().items()}
    arrays |= {_STATE_PREFIX + k: v for k, v in scorer.state().items()}
    _write_atomically(path, arrays)


def _write_atomically(path: Path, arrays: dict[str, npt.NDArray[Any]]) -> None:
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(descriptor, "wb") as file:
            np.savez(file, allow_pickle=False, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise

    # The rename itself is durable only once the directory entry is on disk.
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_model(
    path: str | os.PathLike[str], *, tags: Sequence[str] | None = None
) -> tuple[Scorer, tuple[str, ...]]:
    """Load a model file; return the scorer, ready to continue, and its tags.

    If ``tags`` is given, the file must have been fitted on exactly those
    columns, in that order.

    Raises:
        ModelFileError: the file is missing or unreadable, is not an npz
            archive, comes from a newer format, names an unknown scorer kind or
            invalid params, does not match ``tags``, or holds arrays the scorer
            refuses.
    """
    path = Path(path)
    entries = _read_entries(path)
    header = _parse_header(path, entries.pop(_HEADER, None))
    file_tags = tuple(header["tags"])
    if tags is not None and tuple(tags) != file_tags:
        raise ModelFileError(
            path, f"fitted on tags {list(file_tags)}, expected {list(tags)}"
        )
    scorer = _build_scorer(path, header)

    parameters = _strip(entries, _PARAMETER_PREFIX)
    state = _strip(entries, _STATE_PREFIX)
    prefixes = (_PARAMETER_PREFIX, _STATE_PREFIX)
    unknown = sorted(name for name in entries if not name.startswith(prefixes))
    if unknown:
        raise ModelFileError(path, f"unexpected entries {unknown}")
    try:
        scorer.load_parameters(parameters)
        scorer.restore(state)
    except ValueError as exc:
        raise ModelFileError(path, f"{header['kind']} arrays rejected: {exc}") from exc
    return scorer, file_tags


def _read_entries(path: Path) -> dict[str, npt.NDArray[Any]]:
    """Return every array of the archive at ``path``, by name."""
    # The file is opened here, not by np.load, which leaves its own handle open
    # when the archive turns out to be corrupt.
    try:
        file = path.open("rb")
    except FileNotFoundError:
        raise ModelFileError(path, "no such file") from None
    except OSError as exc:
        raise ModelFileError(path, f"cannot be opened: {exc}") from exc
    with file:
        try:
            loaded = np.load(file, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ModelFileError(path, f"not an npz archive: {exc}") from exc
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ModelFileError(path, "not an npz archive but a single .npy array")
        with loaded as archive:
            try:
                return {name: archive[name] for name in archive.files}
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise ModelFileError(path, f"unreadable npz entry: {exc}") from exc


def _parse_header(path: Path, raw: npt.NDArray[Any] | None) -> dict[str, Any]:
    """Decode and check the JSON header; return it as a dict."""
    if raw is None:
        raise ModelFileError(path, "no header entry (not an edge-models file)")
    try:
        text = raw.tobytes().decode() if raw.dtype == np.uint8 else str(raw[()])
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, IndexError) as exc:
        raise ModelFileError(path, f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ModelFileError(path, "header is not a JSON object")

    _check_format(path, header.get("format"))
    missing = [key for key in _HEADER_KEYS if key not in header]
    if missing:
        raise ModelFileError(path, f"header lacks {', '.join(missing)}")
    k, tags = header["k"], header["tags"]
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ModelFileError(path, f"header k must be a positive integer, got {k!r}")
    if (
        not isinstance(tags, list)
        or not all(isinstance(tag, str) for tag in tags)
        or len(set(tags)) != len(tags)
        or len(tags) != k
    ):
        raise ModelFileError(path, f"header tags must be {k} distinct names: {tags!r}")
    if not isinstance(header["kind"], str) or not isinstance(header["params"], dict):
        raise ModelFileError(path, "header kind must be a name and params an object")
    return header


def _check_format(path: Path, value: object) -> None:
    """Accept ``edge-models/N`` for N up to :data:`FORMAT_VERSION`."""
    name, _, version = str(value).partition("/")
    if name != FORMAT_NAME or not version.isdigit():
        raise ModelFileError(path, f"format {value!r} is not {FORMAT_NAME}/N")
    if int(version) > FORMAT_VERSION:
        raise ModelFileError(
            path,
            f"format {value} is newer than this edge-gateway reads ({FORMAT}); "
            "upgrade edge-gateway to load it",
        )


def _build_scorer(path: Path, header: dict[str, Any]) -> Scorer:
    """Return a fresh scorer of the header's kind, params and width."""
    kind = header["kind"]
    try:
        cls = scorer_class(kind)
    except KeyError:
        raise ModelFileError(path, f"unknown scorer kind {kind!r}") from None
    try:
        # JSON-mode validation: the strict params models accept JSON's lists
        # and numbers where they want tuples and floats.
        params = cls.Params.model_validate_json(json.dumps(header["params"]))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc']))}: {error['msg']}"
            for error in exc.errors()
        )
        raise ModelFileError(path, f"invalid {kind} params: {problems}") from exc
    try:
        return cls(params, header["k"])
    except ValueError as exc:
        raise ModelFileError(path, f"cannot build {kind} scorer: {exc}") from exc


def _strip(entries: dict[str, npt.NDArray[Any]], prefix: str) -> dict[str, Any]:
    """Return the entries named ``prefix + NAME`` as ``{NAME: array}``."""
    return {
        name.removeprefix(prefix): array
        for name, array in entries.items()
        if name.startswith(prefix)
    }
