"""Write the small labeled samples in this folder from the simulated signal generator.

The samples are ours (no third-party data): eight correlated process signals in the
SKAB file layout, with a labeled fault in each experiment, and a CSV of normal
operation for ``edge-gateway fit``. Run from the repository root to regenerate:
``.venv/bin/python tests/data/make_samples.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from drivers.signals import FaultSpec, SignalGenerator, SignalSpec

HERE = Path(__file__).resolve().parent
TAGS = ("pressure", "flow", "temperature", "current", "voltage", "rf", "vib1", "vib2")
ROWS = 900
START = datetime(2026, 1, 5, 8, 0, 0, tzinfo=UTC)
# Experiments: a fault kind on a tag, from row 560 for 120 rows.
EXPERIMENTS = {
    "step.csv": FaultSpec(
        kind="step", tag="pressure", at_s=560, duration_s=120, magnitude=1.5
    ),
    "drift.csv": FaultSpec(
        kind="drift", tag="temperature", at_s=560, duration_s=120, magnitude=4.0
    ),
}
FAULT_ROWS = slice(560, 680)


def specs() -> list[SignalSpec]:
    """Levels, noise and slow cycles of eight signals (one shared 300 s cycle)."""
    levels = (2.0, 32.0, 70.0, 1.3, 230.0, 500.0, 0.03, 0.04)
    return [
        SignalSpec(
            level=level, noise=0.01 * level, amplitude=0.02 * level, period_s=300.0
        )
        for level in levels
    ]


def signals(seed: int, faults: tuple[FaultSpec, ...] = ()) -> np.ndarray:
    generator = SignalGenerator(seed, TAGS, specs(), faults, step_s=1.0)
    values, _ = generator.sample(np.arange(ROWS, dtype=np.float64))
    return values


def stamp(row: int) -> str:
    return (START + timedelta(seconds=row)).strftime("%Y-%m-%d %H:%M:%S")


def write_experiment(path: Path, values: np.ndarray) -> None:
    anomaly = np.zeros(ROWS, dtype=int)
    anomaly[FAULT_ROWS] = 1
    changepoint = np.zeros(ROWS, dtype=int)
    changepoint[[FAULT_ROWS.start, FAULT_ROWS.stop]] = 1
    lines = [";".join(("datetime", *TAGS, "anomaly", "changepoint"))]
    for row in range(ROWS):
        cells = ";".join(f"{v:.6g}" for v in values[row])
        lines.append(f"{stamp(row)};{cells};{anomaly[row]}.0;{changepoint[row]}.0")
    path.write_text("\n".join(lines) + "\n")


def write_normal(path: Path, values: np.ndarray) -> None:
    lines = [",".join(("timestamp", *TAGS))]
    lines += [
        ",".join(
            (stamp(row).replace(" ", "T") + "Z", *(f"{v:.6g}" for v in values[row]))
        )
        for row in range(ROWS)
    ]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    folder = HERE / "sample-skab"
    folder.mkdir(exist_ok=True)
    for seed, (name, fault) in enumerate(EXPERIMENTS.items(), start=1):
        write_experiment(folder / name, signals(seed, (fault,)))
    write_normal(HERE / "sample-normal.csv", signals(99))


if __name__ == "__main__":
    main()
