"""Window autoencoder: reconstruction error of the last ``window`` rows.

A 1-D convolutional autoencoder, trained offline on rows of normal operation
(:mod:`edge_models.train_autoencoder`), compresses a window of standardised rows
and reconstructs it; a window it cannot reconstruct does not look like the normal
rows it learned from. This is the Conv-AE of the SKAB benchmark (Katser and
Kozitsin, 2020, "Skoltech Anomaly Benchmark"), itself the Keras example
"Timeseries anomaly detection using an Autoencoder" (P. Singh, 2020).

The model is a float32 ``.tflite`` file run through the LiteRT interpreter. Its
input is ``(batch, window, k)`` standardised values ``z = (x - mean) / std`` and
its output the reconstruction ``ẑ`` of the same shape. A sidecar JSON file next
to it (same name, ``.json``) carries the tag names, ``window``, ``mean``, ``std``,
the alarm ``limit`` and how it was derived. For the window ending at row ``t``::

    E_t = Σ_j (1 / window) Σ_{i = t - window + 1 .. t} |ẑ_ij - z_ij|
    score_t = E_t / limit

``E_t`` sums over the ``k`` features the mean absolute error over the window, as
SKAB does, and the limit is SKAB's: the 0.999-quantile of ``E`` over the windows
of the normal rows, times 4/3.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_models.base import Arrays, ScoreArray, Scorer, ScorerParams

__all__ = [
    "LIMIT_FACTOR",
    "LIMIT_QUANTILE",
    "MIN_FIT_WINDOWS",
    "SIDECAR_FORMAT",
    "AutoencoderParams",
    "Sidecar",
    "WindowAutoencoder",
    "limit_from_errors",
    "load_interpreter_class",
    "sidecar_path",
]

SIDECAR_FORMAT = "edge-models/autoencoder/1"

# SKAB's Conv-AE limit: the 0.999-quantile of the training window errors, times
# 4/3 so that the tail of normal operation sits well inside it.
LIMIT_QUANTILE = 0.999
LIMIT_FACTOR = 4.0 / 3.0

# Fewer windows than this make the 0.999-quantile little more than the maximum of
# a handful of errors, which is no alarm limit.
MIN_FIT_WINDOWS = 100

# Windows per interpreter call when the model has a dynamic batch dimension:
# enough to amortise the call (a lone window costs about three batched ones) while
# the activations stay in cache. A call of another size re-plans the tensors,
# which costs about 0.1 ms, so a stream of equal poll batches never pays it.
MAX_BATCH = 256

LITERT_REQUIREMENT = "ai-edge-litert>=2.1,<3"

Float64Array = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]


class AutoencoderParams(ScorerParams):
    """``[scorers.autoencoder]``: the model file and the interpreter's threads.

    Attributes:
        model: path of the ``.tflite`` model; its sidecar is the same path with
            ``.json``. In a tool file a relative path is taken from the
            configuration folder; elsewhere from the current directory.
        threads: CPU threads the interpreter may use.
    """

    model: Annotated[Path, Field(strict=False)]
    threads: int = Field(default=1, ge=1)


class LimitRule(BaseModel):
    """How the sidecar's limit was derived from window errors of normal rows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    error: Literal["sum over features of the mean absolute error over the window"]
    quantile: float = Field(gt=0.0, le=1.0)
    factor: float = Field(gt=0.0)
    windows: int = Field(ge=1)


class Sidecar(BaseModel):
    """The JSON file that travels with a ``.tflite`` model.

    Attributes:
        format: :data:`SIDECAR_FORMAT`.
        tags: input tag names, in the model's feature order.
        window: rows per window.
        mean, std: per-tag normalisation, engineering units.
        limit: alarm limit on the window error ``E``.
        limit_rule: how ``limit`` was derived.
        training: free-form training record (rows, epochs, created, ...).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    format: Literal["edge-models/autoencoder/1"]
    tags: list[str] = Field(min_length=1)
    window: int = Field(ge=1)
    mean: list[float]
    std: list[float]
    limit: float = Field(gt=0.0)
    limit_rule: LimitRule
    training: dict[str, Any] = Field(default_factory=dict)

    def check(self) -> None:
        """Raise ``ValueError`` unless mean and std match the tags, std > 0."""
        k = len(self.tags)
        if len(self.mean) != k or len(self.std) != k:
            raise ValueError(
                f"mean and std need {k} entries (one per tag), got "
                f"{len(self.mean)} and {len(self.std)}"
            )
        if min(self.std) <= 0.0:
            raise ValueError("std entries must be positive")


def sidecar_path(model: Path) -> Path:
    """Return the sidecar JSON path of a ``.tflite`` model path."""
    return model.with_suffix(".json")


def limit_from_errors(errors: Float64Array) -> float:
    """Return the alarm limit from normal window errors (SKAB's rule).

    Raises:
        ValueError: fewer than :data:`MIN_FIT_WINDOWS` errors.
    """
    if errors.size < MIN_FIT_WINDOWS:
        raise ValueError(
            f"need at least {MIN_FIT_WINDOWS} full windows of valid rows to set "
            f"the limit, got {errors.size}"
        )
    return float(np.quantile(errors, LIMIT_QUANTILE)) * LIMIT_FACTOR


def load_interpreter_class() -> Any:
    """Return LiteRT's ``Interpreter``, else tflite-runtime's.

    Raises:
        ImportError: neither package is installed; the message names the one to
            install.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as exc:
            raise ImportError(
                "the autoencoder scorer runs .tflite models with LiteRT: "
                f"pip install '{LITERT_REQUIREMENT}'"
            ) from exc
    return Interpreter


def read_sidecar(model: Path) -> Sidecar:
    """Read and check the sidecar of ``model``; ``ValueError`` names the file."""
    path = sidecar_path(model)
    try:
        sidecar = Sidecar.model_validate(json.loads(path.read_text("utf-8")))
        sidecar.check()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the model sidecar: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "sidecar"
        raise ValueError(f"{path}: {where}: {first['msg']}") from exc
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return sidecar


class WindowAutoencoder(Scorer):
    """Causal window-reconstruction score of a ``.tflite`` autoencoder.

    Multivariate: one score per row, NaN on a row with any invalid cell. Such a
    row does not enter the window either, so a window is the last ``window``
    valid rows. The streaming state is the last ``window - 1`` valid rows, in
    engineering units, and how many of them there are; until ``window - 1`` valid
    rows precede a row there is no full window and the row scores 0.0 (warming
    up, as the EWMA scorer does, rather than NaN, which means an invalid row).

    The sidecar's limit makes the scorer fitted on load; :meth:`fit` recomputes
    the limit from this tool's normal rows. ``parameters`` are ``limit`` (a
    scalar), ``mean`` and ``std`` (each ``(k,)``).
    """

    name: ClassVar[str] = "autoencoder"
    Params: ClassVar[type[ScorerParams]] = AutoencoderParams
    multivariate: ClassVar[bool] = True
    needs_fit: ClassVar[bool] = True

    def __init__(self, params: AutoencoderParams, k: int) -> None:
        """Load the model and its sidecar for ``k`` tags.

        Raises:
            ValueError: the model or its sidecar is missing or unreadable, the
                sidecar lists other than ``k`` tags, or the model's tensors are
                not ``(batch, window, k)`` float32 in and out. The message is one
                line that names the file.
            ImportError: no TensorFlow Lite interpreter is installed.
        """
        super().__init__(params, k)
        self.params: AutoencoderParams = params
        self.path = Path(params.model)
        if not self.path.is_file():
            raise ValueError(f"{self.path}: no such model file")
        sidecar = read_sidecar(self.path)
        if len(sidecar.tags) != k:
            raise ValueError(
                f"{sidecar_path(self.path)}: the model takes {len(sidecar.tags)} "
                f"tags ({', '.join(sidecar.tags)}), the scorer was given {k}"
            )
        self.sidecar = sidecar
        self.tags = tuple(sidecar.tags)
        self.window = sidecar.window
        self._mean = np.array(sidecar.mean, dtype=np.float64)
        self._std = np.array(sidecar.std, dtype=np.float64)
        self._limit = sidecar.limit
        self._offsets = np.arange(self.window)
        self._open_interpreter()
        self.fitted = True
        self.reset()

    def _open_interpreter(self) -> None:
        interpreter_class = load_interpreter_class()
        try:
            self._interpreter = interpreter_class(
                model_path=str(self.path), num_threads=self.params.threads
            )
        except ValueError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"{self.path}: cannot load the model: {reason}") from exc

        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        expected = (self.window, self.k)
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(
                f"{self.path}: the model must have one input and one output, has "
                f"{len(inputs)} and {len(outputs)}"
            )
        for role, detail in (("input", inputs[0]), ("output", outputs[0])):
            shape = tuple(int(n) for n in detail["shape_signature"])
            if (
                shape[1:] != expected
                or len(shape) != 3
                or detail["dtype"] != np.float32
            ):
                raise ValueError(
                    f"{self.path}: {role} is {np.dtype(detail['dtype']).name} "
                    f"{shape}, expected float32 (batch, {self.window}, {self.k})"
                )
        self._input = int(inputs[0]["index"])
        self._output = int(outputs[0]["index"])
        # -1 in the signature is a dynamic batch dimension: windows can then go
        # through in one call instead of one call each.
        dynamic = int(inputs[0]["shape_signature"][0]) == -1
        self._batch = int(inputs[0]["shape"][0])
        if self._batch != 1 and not dynamic:
            raise ValueError(
                f"{self.path}: the model's batch dimension is {self._batch}, "
                "expected 1 or dynamic"
            )
        self._max_batch = MAX_BATCH if dynamic else 1
        self._interpreter.allocate_tensors()

    @property
    def limit(self) -> float:
        """The alarm limit on the window error (score 1.0)."""
        return self._limit

    def reset(self) -> None:
        """Forget the buffered rows; the next ``window - 1`` valid rows warm up."""
        self._rows = np.zeros((self.window - 1, self.k))
        self._filled = 0

    def fit(self, normal: Float64Array) -> None:
        """Set the limit from the window errors of ``normal`` rows ``(steps, k)``.

        The limit is the 0.999-quantile of the errors of every full window of
        valid rows, times 4/3 (SKAB). The rows are scored from a fresh state, so
        the state is left as after scoring them. Mean, std and the model stay.

        Raises:
            ValueError: ``normal`` is not ``(steps, k)`` or holds fewer than
                ``window - 1 + MIN_FIT_WINDOWS`` valid rows.
        """
        normal = self._check_shape(normal)
        self.reset()
        ok = np.isfinite(normal).all(axis=1)
        errors = self.window_errors(normal[ok])
        self._limit = limit_from_errors(errors[np.isfinite(errors)])
        self.fitted = True

    def score(
        self, values: npt.NDArray[np.float64], valid: npt.NDArray[np.bool_]
    ) -> ScoreArray:
        """Score ``values`` ``(steps, k)`` row by row into ``(steps, 1)``.

        Raises:
            ValueError: ``values`` or ``valid`` is not ``(steps, k)``.
        """
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != self.k or valid.shape != values.shape:
            raise ValueError(
                f"values {values.shape} and valid {valid.shape} must both be "
                f"(steps, {self.k})"
            )
        ok = (valid & np.isfinite(values)).all(axis=1)
        scores = np.full((values.shape[0], 1), np.nan)
        errors = self.window_errors(values[ok])
        scores[ok, 0] = np.where(np.isnan(errors), 0.0, errors / self._limit)
        return scores

    def window_errors(self, rows: Float64Array) -> Float64Array:
        """Return ``E`` of the window ending at each of ``rows`` and advance.

        ``rows`` ``(m, k)`` must all be valid. A row without a full window yet
        gets NaN. The buffered rows are updated as if ``rows`` had been scored.
        """
        keep = self.window - 1
        sequence = np.concatenate([self._rows[keep - self._filled :], rows])
        errors = np.full(rows.shape[0], np.nan)
        # The first full window ends at sequence index window - 1, which is row
        # window - 1 - filled of ``rows``.
        first = max(0, keep - self._filled)
        if first < rows.shape[0]:
            z = ((sequence - self._mean) / self._std).astype(np.float32)
            errors[first:] = self._reconstruction_errors(z)

        self._filled = min(keep, self._filled + rows.shape[0])
        if keep:
            self._rows[keep - self._filled :] = sequence[-self._filled :]
        return errors

    def _reconstruction_errors(self, z: Float32Array) -> Float64Array:
        """Return ``E`` of every window of the standardised rows ``z``."""
        n = z.shape[0] - self.window + 1
        errors = np.empty(n)
        for start in range(0, n, self._max_batch):
            # One gather builds the chunk's windows contiguous, as the interpreter
            # needs them; a strided view would cost a copy and more overhead.
            ends = np.arange(start, min(n, start + self._max_batch))
            chunk = z[ends[:, np.newaxis] + self._offsets]
            absolute = np.abs(self._invoke(chunk) - chunk)
            errors[start : start + chunk.shape[0]] = absolute.mean(
                axis=1, dtype=np.float64
            ).sum(axis=1)
        return errors

    def _invoke(self, batch: Float32Array) -> Float32Array:
        if batch.shape[0] != self._batch:
            self._interpreter.resize_tensor_input(
                self._input, list(batch.shape), strict=True
            )
            self._interpreter.allocate_tensors()
            self._batch = batch.shape[0]
        self._interpreter.set_tensor(self._input, batch)
        self._interpreter.invoke()
        reconstruction: Float32Array = self._interpreter.get_tensor(self._output)
        return reconstruction

    def state(self) -> Arrays:
        """Return ``rows`` ``(window - 1, k)`` (newest last) and ``filled`` ``()``."""
        return {"rows": self._rows.copy(), "filled": np.array(self._filled)}

    def restore(self, state: Arrays) -> None:
        """Load :meth:`state` output; raise ``ValueError`` if it does not fit."""
        missing = [key for key in ("rows", "filled") if key not in state]
        if missing:
            raise ValueError(f"autoencoder state lacks {', '.join(missing)}")
        rows = np.asarray(state["rows"], dtype=np.float64)
        filled = np.asarray(state["filled"])
        keep = self.window - 1
        if rows.shape != (keep, self.k) or filled.shape != ():
            raise ValueError(
                f"autoencoder state rows {rows.shape} and filled {filled.shape} "
                f"must be ({keep}, {self.k}) and ()"
            )
        if not 0 <= int(filled) <= keep or not np.isfinite(rows).all():
            raise ValueError(
                f"autoencoder state needs finite rows and 0 <= filled <= {keep}"
            )
        self._rows = rows.copy()
        self._filled = int(filled)

    def parameters(self) -> Arrays:
        """Return ``limit`` ``()``, ``mean`` and ``std`` ``(k,)``."""
        return {
            "limit": np.array(self._limit),
            "mean": self._mean.copy(),
            "std": self._std.copy(),
        }

    def load_parameters(self, parameters: Arrays) -> None:
        """Load :meth:`parameters` output; raise ``ValueError`` if it does not fit."""
        missing = [key for key in ("limit", "mean", "std") if key not in parameters]
        if missing:
            raise ValueError(f"autoencoder parameters lack {', '.join(missing)}")
        limit = np.asarray(parameters["limit"], dtype=np.float64)
        mean = np.asarray(parameters["mean"], dtype=np.float64)
        std = np.asarray(parameters["std"], dtype=np.float64)
        if limit.shape != () or mean.shape != (self.k,) or std.shape != (self.k,):
            raise ValueError(
                f"autoencoder parameters limit {limit.shape}, mean {mean.shape} and "
                f"std {std.shape} must be (), ({self.k},) and ({self.k},)"
            )
        if not (math.isfinite(limit) and limit > 0 and np.isfinite(mean).all()):
            raise ValueError(
                "autoencoder parameters need a positive limit, finite mean"
            )
        if not (np.isfinite(std).all() and (std > 0).all()):
            raise ValueError("autoencoder parameters need finite, positive std")
        self._limit = float(limit)
        self._mean = mean.copy()
        self._std = std.copy()
        self.fitted = True
