"""Tests of the window autoencoder scorer and its shipped demo model (no TensorFlow)."""

from __future__ import annotations

import itertools
import json
import shutil
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import edge_models
from drivers.signals import FaultSpec, SignalGenerator, SignalSpec
from edge_models.autoencoder import (
    LIMIT_FACTOR,
    LIMIT_QUANTILE,
    AutoencoderParams,
    WindowAutoencoder,
    load_interpreter_class,
    sidecar_path,
)
from edge_models.base import scorer_class
from edge_models.train_autoencoder import read_csv

try:
    load_interpreter_class()
except ImportError:
    pytest.skip(
        "neither ai_edge_litert nor tflite_runtime is installed: the autoencoder "
        "runs its .tflite model through one of them",
        allow_module_level=True,
    )

MODEL = Path(edge_models.__file__).parent / "models" / "demo_etch.tflite"
DEMO = Path(__file__).parents[1] / "config" / "demo"
SIMULATION = DEMO / "simulation" / "etch-07.toml"
STEP_S = 0.5  # the fast poll group's interval, as the model was trained
TAGS = ("chamber_pressure", "rf_forward_power", "rf_reflected_power")
K = len(TAGS)
WINDOW = 60
NORMAL_ROWS = 6000
# The spec asks for fewer than 1 % false alarms on fresh normal data.
MAX_FALSE_ALARM_RATE = 0.01
# Sample index of the injected faults, mid-stream; at_s sits between grid points.
FAULT_ROW = 3000
FAULT_AT_S = FAULT_ROW * STEP_S - STEP_S / 2
# Interpreter kernels may sum in another order for another batch size, so equal
# inputs are compared to a float32 rounding, not bit for bit.
RTOL = 1e-6

FloatArray = npt.NDArray[np.float64]


def signal_generator(seed: int, faults: tuple[FaultSpec, ...] = ()) -> SignalGenerator:
    """Return the etch tool's fast-group signals, as the demo tool simulates them."""
    sources = tomllib.loads(SIMULATION.read_text("utf-8"))["signals"]
    specs = [SignalSpec.model_validate(sources[name]) for name in TAGS]
    return SignalGenerator(seed, TAGS, specs, faults, step_s=STEP_S)


def simulate(seed: int, rows: int, faults: tuple[FaultSpec, ...] = ()) -> FloatArray:
    """Return ``rows`` simulated rows of the three fast-group tags."""
    values, _ = signal_generator(seed, faults).sample(np.arange(rows) * STEP_S)
    return values


def scorer(model: Path = MODEL) -> WindowAutoencoder:
    """Return a scorer of ``model`` for the three tags."""
    return WindowAutoencoder(AutoencoderParams(model=str(model)), K)


def all_valid(values: FloatArray) -> npt.NDArray[np.bool_]:
    """Return a validity mask marking every cell valid."""
    return np.ones(values.shape, dtype=bool)


def reference_errors(model: Path, values: FloatArray, valid: Any) -> FloatArray:
    """Compute each row's window error the slow way, one interpreter call per row."""
    sidecar = json.loads(sidecar_path(model).read_text("utf-8"))
    window, mean, std = sidecar["window"], sidecar["mean"], sidecar["std"]
    interpreter = load_interpreter_class()(model_path=str(model))
    interpreter.allocate_tensors()
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]

    history: list[list[float]] = []
    errors = np.full(len(values), np.nan)
    for t, row in enumerate(values):
        if not all(valid[t]) or not all(np.isfinite(row)):
            continue
        history.append([(row[j] - mean[j]) / std[j] for j in range(len(row))])
        if len(history) < window:
            errors[t] = -1.0  # warming up: scores 0.0
            continue
        z = np.array([history[-window:]], dtype=np.float32)
        interpreter.set_tensor(input_index, z)
        interpreter.invoke()
        reconstruction = interpreter.get_tensor(output_index)[0]
        total = 0.0
        for j in range(len(row)):
            column = [
                abs(float(reconstruction[i, j]) - float(z[0, i, j]))
                for i in range(window)
            ]
            total += sum(column) / window
        errors[t] = total
    return errors


def reference_scores(model: Path, values: FloatArray, valid: Any) -> FloatArray:
    """Turn reference window errors into scores: 0.0 while warming, NaN if invalid."""
    limit = json.loads(sidecar_path(model).read_text("utf-8"))["limit"]
    errors = reference_errors(model, values, valid)
    return np.where(errors < 0, 0.0, errors / limit)


def messy_stream(seed: int, rows: int) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Return simulated rows with NaN, inf, invalid cells and a constant stretch."""
    rng = np.random.default_rng(seed)
    values = simulate(seed, rows)
    valid = all_valid(values)
    values[rng.choice(rows, rows // 20, replace=False), rng.integers(0, K)] = np.nan
    values[rng.choice(rows, rows // 50, replace=False), 0] = np.inf
    valid[rng.choice(rows, rows // 20, replace=False), rng.integers(0, K)] = False
    values[rows // 2 : rows // 2 + WINDOW, 2] = values[rows // 2, 2]
    return values, valid


@pytest.fixture(scope="module")
def normal() -> FloatArray:
    """Fresh normal rows from a seed the model was not trained on."""
    return simulate(seed=101, rows=NORMAL_ROWS)


def test_shipped_model_loads() -> None:
    """The shipped model loads through LiteRT with its sidecar's tags and limit."""
    ae = scorer()

    assert scorer_class("autoencoder") is WindowAutoencoder
    assert ae.tags == TAGS
    assert ae.window == WINDOW
    assert ae.outputs == 1
    assert ae.fitted
    assert ae.limit > 0
    assert MODEL.stat().st_size < 64 * 1024


def test_normal_data_rarely_alarms(normal: FloatArray) -> None:
    """On fresh normal rows fewer than 1 % of the scores exceed the limit."""
    scores = scorer().score(normal, all_valid(normal))[:, 0]

    assert np.isfinite(scores).all()
    assert np.mean(scores > 1.0) < MAX_FALSE_ALARM_RATE


def test_warm_up_scores_zero(normal: FloatArray) -> None:
    """The first window - 1 valid rows score 0.0, the rows after them do not."""
    scores = scorer().score(normal[: 2 * WINDOW], all_valid(normal[: 2 * WINDOW]))

    np.testing.assert_array_equal(scores[: WINDOW - 1], 0.0)
    assert (scores[WINDOW - 1 :] > 0).all()


@pytest.mark.parametrize(
    "fault",
    [
        {
            "kind": "spike",
            "tag": "chamber_pressure",
            "duration_s": 2.5,
            "magnitude": 25.0,
        },
        {
            "kind": "step",
            "tag": "rf_reflected_power",
            "duration_s": 60,
            "magnitude": 3.0,
        },
    ],
    ids=["spike", "step"],
)
def test_fault_scores_above_limit(fault: dict[str, Any]) -> None:
    """A spike or a step from the signal generator scores above 1 while it lasts."""
    spec = FaultSpec.model_validate({**fault, "at_s": FAULT_AT_S})
    values = simulate(seed=202, rows=FAULT_ROW + 4 * WINDOW, faults=(spec,))
    scores = scorer().score(values, all_valid(values))[:, 0]

    assert scores[FAULT_ROW : FAULT_ROW + WINDOW].max() > 1.0
    assert scores[:FAULT_ROW].max() < 1.0


def test_matches_slow_reference() -> None:
    """Scores equal a window-by-window interpreter loop with the error by hand."""
    values, valid = messy_stream(seed=3, rows=400)

    scores = scorer().score(values, valid)[:, 0]

    np.testing.assert_allclose(
        scores, reference_scores(MODEL, values, valid), rtol=RTOL, equal_nan=True
    )


def test_batch_size_invariance() -> None:
    """One batch, one-row batches and uneven batches give the same scores."""
    values, valid = messy_stream(seed=4, rows=700)
    cuts = [0, 1, 2, 30, 59, 61, 300, 301, 556, 700]

    whole = scorer().score(values, valid)
    one_row = scorer()
    by_row = np.vstack(
        [one_row.score(values[t : t + 1], valid[t : t + 1]) for t in range(700)]
    )
    uneven = scorer()
    by_part = np.vstack(
        [uneven.score(values[a:b], valid[a:b]) for a, b in itertools.pairwise(cuts)]
    )

    np.testing.assert_allclose(by_row, whole, rtol=RTOL, equal_nan=True)
    np.testing.assert_allclose(by_part, whole, rtol=RTOL, equal_nan=True)


def test_state_and_parameters_restore_continue_identically(normal: FloatArray) -> None:
    """A scorer restored from state and parameters continues as the original does."""
    ok = all_valid(normal)
    original = scorer()
    original.fit(normal[:3000])
    original.score(normal[3000:3030], ok[3000:3030])
    saved_state, saved_parameters = original.state(), original.parameters()

    restored = scorer()
    restored.load_parameters(saved_parameters)
    restored.restore(saved_state)

    np.testing.assert_array_equal(
        restored.score(normal[3030:3200], ok[3030:3200]),
        original.score(normal[3030:3200], ok[3030:3200]),
    )
    assert restored.limit == original.limit


def test_invalid_rows_score_nan_and_stay_out_of_the_window(normal: FloatArray) -> None:
    """Rows with an invalid cell score NaN and are skipped, as if never received."""
    rows = normal[:300]
    valid = all_valid(rows)
    bad = np.array([10, 70, 71, 150, 299])
    gappy = rows.copy()
    gappy[bad[:2], 1] = np.nan
    valid[bad[2:], 0] = False

    scores = scorer().score(gappy, valid)[:, 0]
    keep = np.setdiff1d(np.arange(300), bad)
    clean = scorer().score(rows[keep], all_valid(rows[keep]))[:, 0]

    assert np.isnan(scores[bad]).all()
    np.testing.assert_allclose(scores[keep], clean, rtol=RTOL)


def test_fit_sets_the_published_limit_and_leaves_the_state_warm(
    normal: FloatArray,
) -> None:
    """fit sets 4/3 x the 0.999-quantile of normal window errors, state warm."""
    fitted = scorer()
    fitted.fit(normal[:2000])
    errors = scorer().window_errors(normal[:2000])
    streamed = scorer()
    streamed.score(normal[:2000], all_valid(normal[:2000]))

    expected = np.quantile(errors[WINDOW - 1 :], LIMIT_QUANTILE) * LIMIT_FACTOR
    assert fitted.limit == pytest.approx(expected, rel=1e-12)
    for key, value in streamed.state().items():
        np.testing.assert_array_equal(fitted.state()[key], value)


def test_fit_refuses_too_few_rows(normal: FloatArray) -> None:
    """fit raises ValueError when too few full windows remain to set a limit."""
    with pytest.raises(ValueError, match="full windows"):
        scorer().fit(normal[: WINDOW + 10])


def test_restore_and_load_parameters_refuse_misfits() -> None:
    """restore and load_parameters raise ValueError on missing keys or shapes."""
    ae = scorer()
    parameters = ae.parameters()

    with pytest.raises(ValueError, match="lacks filled"):
        ae.restore({"rows": np.zeros((WINDOW - 1, K))})
    with pytest.raises(ValueError, match="must be"):
        ae.restore({"rows": np.zeros((WINDOW, K)), "filled": np.array(0)})
    with pytest.raises(ValueError, match="filled"):
        ae.restore({"rows": np.zeros((WINDOW - 1, K)), "filled": np.array(WINDOW)})
    with pytest.raises(ValueError, match="must be"):
        ae.load_parameters({**parameters, "mean": np.zeros(K + 1)})
    with pytest.raises(ValueError, match="positive limit"):
        ae.load_parameters({**parameters, "limit": np.array(-1.0)})
    with pytest.raises(ValueError, match="positive std"):
        ae.load_parameters({**parameters, "std": np.zeros(K)})


def copy_model(tmp_path: Path, **changes: Any) -> Path:
    """Copy the shipped model to ``tmp_path`` with some sidecar fields changed."""
    model = tmp_path / "model.tflite"
    shutil.copyfile(MODEL, model)
    sidecar = json.loads(sidecar_path(MODEL).read_text("utf-8"))
    sidecar_path(model).write_text(json.dumps({**sidecar, **changes}), "utf-8")
    return model


@pytest.mark.parametrize(
    ("breakage", "match"),
    [
        ("missing model", "no such model file"),
        ("missing sidecar", "cannot read the model sidecar"),
        ("not a model", "cannot load the model"),
        ("sidecar not JSON", "not JSON"),
        ("other format", "format"),
        ("other tag count", "the model takes 2 tags"),
        ("other window", r"expected float32 \(batch, 30, 3\)"),
        ("std of zero", "std entries must be positive"),
    ],
)
def test_load_errors_are_one_line_naming_the_file(
    tmp_path: Path, breakage: str, match: str
) -> None:
    """A broken model or sidecar raises a one-line ValueError naming the file."""
    model = copy_model(tmp_path)
    if breakage == "missing model":
        model.unlink()
    elif breakage == "missing sidecar":
        sidecar_path(model).unlink()
    elif breakage == "not a model":
        model.write_bytes(b"not a flatbuffer at all")
    elif breakage == "sidecar not JSON":
        sidecar_path(model).write_text("{", "utf-8")
    elif breakage == "other format":
        model = copy_model(tmp_path, format="edge-models/autoencoder/2")
    elif breakage == "other tag count":
        model = copy_model(tmp_path, tags=list(TAGS[:2]), mean=[0, 0], std=[1, 1])
    elif breakage == "other window":
        model = copy_model(tmp_path, window=30)
    else:
        model = copy_model(tmp_path, std=[1.0, 0.0, 1.0])

    with pytest.raises(ValueError, match=match) as raised:
        scorer(model)

    message = str(raised.value)
    assert "\n" not in message
    assert str(model.parent) in message


def test_params_refuse_a_bad_thread_count() -> None:
    """threads must be at least 1."""
    with pytest.raises(ValueError, match="threads"):
        AutoencoderParams(model=str(MODEL), threads=0)


def test_read_csv_drops_the_timestamp_column(tmp_path: Path) -> None:
    """read_csv returns the feature columns, empty cells as NaN, without timestamp."""
    path = tmp_path / "normal.csv"
    path.write_text(
        "timestamp,a,b\n2024-01-01T00:00:00,1.5,2\n2024-01-01T00:00:01,,3\n"
    )

    names, values = read_csv(path)

    assert names == ["a", "b"]
    np.testing.assert_array_equal(values, [[1.5, 2.0], [np.nan, 3.0]])
