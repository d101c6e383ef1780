"""Train a window autoencoder offline; write its ``.tflite`` model and sidecar.

The network is SKAB's Conv-AE (Katser and Kozitsin, 2020), after the Keras example
by P. Singh (2020): over windows of ``window`` standardised rows ``(window, k)``::

    Conv1D(f1, 7, strides 2, relu) - Dropout(0.2) - Conv1D(f2, 7, strides 2, relu)
    - Conv1DTranspose(f2, 7, strides 2, relu) - Dropout(0.2)
    - Conv1DTranspose(f1, 7, strides 2, relu) - Conv1DTranspose(k, 7)

with ``(f1, f2) = (32, 16)`` as published, trained to reproduce its input (mean
squared error, Adam at 1e-3, batch 32, at most 100 epochs, early stopping on the
last 10 % of windows with patience 5). ``window`` must be a multiple of 4 so the
two stride-2 layers undo each other exactly.

The model is converted to a float32 ``.tflite`` with a dynamic batch dimension, so
the scorer can reconstruct many windows per call. The sidecar's limit is set by
:meth:`WindowAutoencoder.fit` on the training rows, through the same interpreter
that will score with it.

TensorFlow is imported only inside the functions that need it
(``pip install 'edge-gateway[train]'``); the gateway itself never needs it::

    python -m edge_models.train_autoencoder --csv normal.csv --out model.tflite
    python -m edge_models.train_autoencoder --simulate config/demo/tools/etch-07.toml \\
        --group fast --rows 20000 --filters 16 8 \\
        --out edge_models/models/demo_etch.tflite

The shipped demo model was made by the second command: half the published
filters keep it at about 3 k parameters (22 KB) and 12 µs a window (batched).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import shutil
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from edge_models.autoencoder import (
    LIMIT_FACTOR,
    LIMIT_QUANTILE,
    MIN_FIT_WINDOWS,
    SIDECAR_FORMAT,
    AutoencoderParams,
    WindowAutoencoder,
    sidecar_path,
)

__all__ = [
    "TrainedAutoencoder",
    "TrainingSettings",
    "main",
    "read_csv",
    "simulated_rows",
    "train",
    "write_model",
]

TIMESTAMP_COLUMN = "timestamp"
KERNEL_SIZE = 7
STRIDES = 2
# Two stride-2 encoder layers: the window must halve twice without remainder.
WINDOW_MULTIPLE = STRIDES * STRIDES
DROPOUT = 0.2
LEARNING_RATE = 1e-3
VALIDATION_SPLIT = 0.1
# A constant tag has std 0; the floor keeps its standardised values finite.
MIN_STD = 1e-9
# Exit status when the rows or settings cannot train a model, as argparse uses.
EXIT_INPUT = 2
WINDOW_ERROR = "sum over features of the mean absolute error over the window"

Float64Array = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class TrainingSettings:
    """Hyper-parameters of :func:`train`; the defaults are SKAB's Conv-AE."""

    window: int = 60
    filters: tuple[int, int] = (32, 16)
    max_epochs: int = 100
    batch_size: int = 32
    patience: int = 5
    seed: int = 0


@dataclass(frozen=True, slots=True)
class TrainedAutoencoder:
    """A converted model and its sidecar, not yet written.

    Attributes:
        tflite: the float32 ``.tflite`` flatbuffer.
        sidecar: the sidecar's content but for ``limit`` and ``limit_rule``.
        rows: the training rows, valid ones only, ``(steps, k)``.
    """

    tflite: bytes
    sidecar: dict[str, Any]
    rows: Float64Array


def read_csv(path: Path) -> tuple[list[str], Float64Array]:
    """Return the feature names and values ``(steps, k)`` of a CSV file.

    The header names the columns; a ``timestamp`` column is dropped, every other
    column is a feature. Empty cells read as NaN.

    Raises:
        ValueError: the file has no header, no feature column, or a cell that is
            not a number; the message names the file.
    """
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.reader(file)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file, expected a header row")
        keep = [i for i, name in enumerate(header) if name != TIMESTAMP_COLUMN]
        if not keep:
            raise ValueError(f"{path}: no feature columns besides {TIMESTAMP_COLUMN}")
        rows = []
        for line, record in enumerate(reader, start=2):
            try:
                rows.append([float(record[i]) if record[i] else math.nan for i in keep])
            except (ValueError, IndexError) as exc:
                raise ValueError(f"{path}:{line}: {exc}") from exc
    values = np.array(rows, dtype=np.float64).reshape(len(rows), len(keep))
    return [header[i] for i in keep], values


def simulated_rows(
    tool_config: Path, group: str, rows: int, seed: int
) -> tuple[list[str], Float64Array]:
    """Generate fault-free rows of one poll group of a simulated tool.

    The tags' ``source`` tables of the tool's TOML file drive
    :class:`drivers.signals.SignalGenerator` (its faults are left out), sampled
    every ``interval_s`` of the group, in engineering units (``scale``, ``offset``).

    Raises:
        ValueError: the file has no poll group ``group``.
    """
    from drivers.signals import SignalGenerator, SignalSpec

    config = tomllib.loads(tool_config.read_text("utf-8"))
    groups = {g["name"]: g for g in config.get("poll_groups", [])}
    if group not in groups:
        raise ValueError(f"{tool_config}: no poll group {group!r}")
    tags = {tag["name"]: tag for tag in config.get("tags", [])}
    names = list(groups[group]["tags"])
    specs = [SignalSpec.model_validate(tags[name]["source"]) for name in names]
    step_s = float(groups[group]["interval_s"])
    generator = SignalGenerator(seed, names, specs, step_s=step_s)
    values, _ = generator.sample(np.arange(rows) * step_s)
    scale = np.array([tags[name].get("scale", 1.0) for name in names])
    offset = np.array([tags[name].get("offset", 0.0) for name in names])
    return names, values * scale + offset


def _windows(z: npt.NDArray[np.float32], window: int) -> npt.NDArray[np.float32]:
    """Return every window of ``window`` consecutive rows, ``(n, window, k)``."""
    return np.ascontiguousarray(
        sliding_window_view(z, window, axis=0).transpose(0, 2, 1)
    )


def _build_model(window: int, k: int, filters: tuple[int, int]) -> Any:
    import tensorflow as tf

    keras = tf.keras
    layers = keras.layers
    first, second = filters
    conv = {"kernel_size": KERNEL_SIZE, "padding": "same", "strides": STRIDES}
    model = keras.Sequential(
        [
            keras.Input(shape=(window, k)),
            layers.Conv1D(first, activation="relu", **conv),
            layers.Dropout(DROPOUT),
            layers.Conv1D(second, activation="relu", **conv),
            layers.Conv1DTranspose(second, activation="relu", **conv),
            layers.Dropout(DROPOUT),
            layers.Conv1DTranspose(first, activation="relu", **conv),
            layers.Conv1DTranspose(k, kernel_size=KERNEL_SIZE, padding="same"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss="mse")
    return model


def _convert(model: Any, window: int, k: int) -> bytes:
    """Convert to float32 ``.tflite`` with input ``(None, window, k)``.

    The model goes through a SavedModel because converting a Keras 3 model's
    concrete function directly keeps its weights as uninitialised variables.
    """
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as scratch:
        model.export(
            scratch,
            format="tf_saved_model",
            input_signature=[tf.TensorSpec([None, window, k], tf.float32)],
            verbose=False,
        )
        converter = tf.lite.TFLiteConverter.from_saved_model(scratch)
        tflite: bytes = converter.convert()
    return tflite


def train(
    values: Float64Array, tags: Sequence[str], settings: TrainingSettings
) -> TrainedAutoencoder:
    """Train and convert an autoencoder on normal rows ``(steps, k)``.

    Rows with a non-finite cell are dropped, as the scorer skips them.

    Raises:
        ValueError: the window is not a positive multiple of 4, the tags do not
            match the columns, or too few valid rows remain to set the limit
            (``window - 1 + MIN_FIT_WINDOWS``).
    """
    import tensorflow as tf

    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != len(tags):
        raise ValueError(f"values {values.shape} must be (steps, {len(tags)} tags)")
    window = settings.window
    if window < WINDOW_MULTIPLE or window % WINDOW_MULTIPLE:
        raise ValueError(f"window must be a positive multiple of 4, got {window}")
    rows = values[np.isfinite(values).all(axis=1)]
    needed = window - 1 + MIN_FIT_WINDOWS
    if rows.shape[0] < needed:
        raise ValueError(f"need at least {needed} valid rows, got {rows.shape[0]}")

    mean = rows.mean(axis=0)
    std = np.maximum(rows.std(axis=0), MIN_STD)
    windows = _windows(((rows - mean) / std).astype(np.float32), window)

    tf.keras.utils.set_random_seed(settings.seed)
    model = _build_model(window, len(tags), settings.filters)
    stop = tf.keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=settings.patience, restore_best_weights=True
    )
    started = time.monotonic()
    history = model.fit(
        windows,
        windows,
        epochs=settings.max_epochs,
        batch_size=settings.batch_size,
        validation_split=VALIDATION_SPLIT,
        callbacks=[stop],
        verbose=0,
    )
    seconds = time.monotonic() - started

    sidecar: dict[str, Any] = {
        "format": SIDECAR_FORMAT,
        "tags": list(tags),
        "window": window,
        "mean": mean.tolist(),
        "std": std.tolist(),
        "training": {
            "rows": int(rows.shape[0]),
            "windows": int(windows.shape[0]),
            "epochs": len(history.history["loss"]),
            "best_val_loss": float(min(history.history["val_loss"])),
            "parameters": int(model.count_params()),
            "filters": list(settings.filters),
            "seconds": round(seconds, 1),
            "seed": settings.seed,
            "tensorflow": tf.__version__,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
    }
    return TrainedAutoencoder(_convert(model, window, len(tags)), sidecar, rows)


def write_model(trained: TrainedAutoencoder, out: Path, source: str) -> float:
    """Set the limit on the training rows, write ``out`` and its sidecar.

    The limit comes from the scorer itself on a scratch copy, so the written
    sidecar is never without one. Returns the limit.
    """
    with tempfile.TemporaryDirectory() as scratch:
        model = Path(scratch) / out.name
        model.write_bytes(trained.tflite)
        provisional = _sidecar(trained, source, limit=1.0, windows=1)
        sidecar_path(model).write_text(json.dumps(provisional), "utf-8")
        params = AutoencoderParams(model=model)
        scorer = WindowAutoencoder(params, len(provisional["tags"]))
        scorer.fit(trained.rows)

        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model, out)
    windows = trained.rows.shape[0] - scorer.window + 1
    sidecar = _sidecar(trained, source, limit=scorer.limit, windows=windows)
    sidecar_path(out).write_text(json.dumps(sidecar, indent=2) + "\n", "utf-8")
    return scorer.limit


def _sidecar(
    trained: TrainedAutoencoder, source: str, *, limit: float, windows: int
) -> dict[str, Any]:
    """Return the sidecar in reading order: inputs, limit, then the record."""
    content = dict(trained.sidecar)
    training = {**content.pop("training"), "source": source}
    return {
        **content,
        "limit": limit,
        "limit_rule": _limit_rule(windows),
        "training": training,
    }


def _limit_rule(windows: int) -> dict[str, Any]:
    return {
        "error": WINDOW_ERROR,
        "quantile": LIMIT_QUANTILE,
        "factor": LIMIT_FACTOR,
        "windows": windows,
    }


def _parser() -> argparse.ArgumentParser:
    defaults = TrainingSettings()
    parser = argparse.ArgumentParser(
        prog="python -m edge_models.train_autoencoder",
        description="Train a Conv1D window autoencoder on normal rows; write "
        "a .tflite model and its JSON sidecar.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--csv", type=Path, help="CSV of normal rows (timestamp + tags)"
    )
    source.add_argument(
        "--simulate", type=Path, metavar="TOOL_TOML", help="simulated tool config"
    )
    parser.add_argument("--group", default="fast", help="poll group (--simulate)")
    parser.add_argument("--rows", type=int, default=20_000, help="rows (--simulate)")
    parser.add_argument("--window", type=int, default=defaults.window)
    parser.add_argument(
        "--filters", type=int, nargs=2, default=defaults.filters, metavar=("F1", "F2")
    )
    parser.add_argument("--epochs", type=int, default=defaults.max_epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--patience", type=int, default=defaults.patience)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--out", type=Path, required=True, help="the .tflite to write")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT


def _run(args: argparse.Namespace) -> int:
    if args.csv is not None:
        tags, values = read_csv(args.csv)
        source = f"csv {args.csv.name}"
    else:
        tags, values = simulated_rows(args.simulate, args.group, args.rows, args.seed)
        source = (
            f"drivers.signals.SignalGenerator: {args.simulate.name} group "
            f"{args.group}, {args.rows} fault-free rows, seed {args.seed}"
        )
    settings = TrainingSettings(
        window=args.window,
        filters=(args.filters[0], args.filters[1]),
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        patience=args.patience,
        seed=args.seed,
    )
    trained = train(values, tags, settings)
    limit = write_model(trained, args.out, source)
    record = trained.sidecar["training"]
    print(
        f"wrote {args.out} ({len(trained.tflite)} bytes): {record['parameters']} "
        f"parameters, {record['epochs']} epochs in {record['seconds']} s, "
        f"best val loss {record['best_val_loss']:.4f}, limit {limit:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
