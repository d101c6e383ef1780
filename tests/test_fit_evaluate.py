"""``edge-gateway fit`` and ``evaluate``: normal data, a model file, the figures."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_models.base import scorer_class
from edge_models.modelfile import load_model
from gateway.alerts import AlertEvent
from gateway.cli import main
from gateway.config import load_config
from gateway.daemon import Gateway
from gateway.evaluate import Stack, alarms_from_events, load_stack

SAMPLES = Path(__file__).resolve().parent / "data"
SKAB_SAMPLE = SAMPLES / "sample-skab"
NORMAL_CSV = SAMPLES / "sample-normal.csv"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
JSON_KEYS = {
    "f1",
    "far",
    "mar",
    "nab_standard",
    "nab_low_fp",
    "nab_low_fn",
    "us_per_row",
}
PCA_STACK = """
tag_scorers = []
[[models]]
kind = "pca"
[alerts]
raise_after = 1
clear_after = 1
clear_level = 1.0
cooldown_s = 0
"""


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert main(list(argv)) == 0
    result: dict[str, object] = json.loads(capsys.readouterr().out)
    return result


def test_fit_then_evaluate_the_shipped_sample(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A PCA fitted on the normal sample finds the sample's labeled faults."""
    model = tmp_path / "chamber.npz"
    assert (
        main(["fit", "--kind", "pca", "--csv", str(NORMAL_CSV), "--out", str(model)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "fitted pca on 900 rows of 8 tags" in printed
    assert "t2_limit = " in printed
    assert "q_limit = " in printed
    scorer, tags = load_model(model)
    assert tags[0] == "pressure"
    assert scorer.fitted

    figures = run_json(
        capsys, "evaluate", str(SKAB_SAMPLE), "--model", str(model), "--json"
    )
    assert set(figures) >= JSON_KEYS
    assert figures["format"] == "skab"
    assert figures["rows"] == 1000  # two files of 900 rows, 400 of each for fitting
    assert isinstance(figures["f1"], float)
    assert figures["f1"] > 0.5
    assert isinstance(figures["far"], float)
    assert figures["far"] < 5.0


def test_evaluate_a_stack_fits_each_file_itself(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a stack file each experiment is fitted on its own first 400 rows."""
    stack = tmp_path / "pca.toml"
    stack.write_text(PCA_STACK)
    figures = run_json(
        capsys, "evaluate", str(SKAB_SAMPLE), "--stack", str(stack), "--json"
    )
    assert figures["files"] == 2
    assert isinstance(figures["mar"], float)
    assert figures["mar"] < 60.0
    assert isinstance(figures["us_per_row"], float)
    assert figures["us_per_row"] > 0


def test_evaluate_refuses_a_malformed_file_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad number in a data file exits 2 with a line naming the file and row."""
    folder = tmp_path / "data"
    shutil.copytree(SKAB_SAMPLE, folder)
    path = folder / "step.csv"
    lines = path.read_text().splitlines()
    fields = lines[5].split(";")
    fields[3] = "hot"
    lines[5] = ";".join(fields)
    path.write_text("\n".join(lines) + "\n")

    assert main(["evaluate", str(folder), "--format", "skab"]) == 2
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1
    assert "step.csv" in out
    assert "row 6" in out
    assert "'hot'" in out


def test_fit_refuses_a_bad_csv_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CSV cell that is not a number is named by file, line and column."""
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "timestamp,a,b\n2026-01-01T00:00:00,1.0,2.0\n2026-01-01T00:00:01,x,2.0\n"
    )
    assert (
        main(["fit", "--kind", "pca", "--csv", str(bad), "--out", str(tmp_path / "m")])
        == 2
    )
    out = capsys.readouterr().out.strip()
    assert out == f"fit: {bad}: line 3: 'x' is not a number in column a"


def test_fit_from_the_stores_own_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model fitted from a time range of the store covers the group's tags."""
    config_dir = tmp_path / "config"
    (config_dir / "tools").mkdir(parents=True)
    (config_dir / "gateway.toml").write_text(
        '[gateway]\nsite = "s"\nid = "g"\n[mqtt]\nenabled = false\n'
        f'[store]\npath = "{tmp_path / "gateway.db"}"\ncommit_interval_ms = 20\n'
    )
    tags = "\n".join(
        f'[[tags]]\nname = "t{i}"\nsource = {{ level = {10 + i}.0, noise = 0.1 }}\n'
        for i in range(3)
    )
    (config_dir / "tools" / "etch-01.toml").write_text(
        '[driver]\nkind = "simulated"\nsteps_per_poll = 20\n'
        '[[poll_groups]]\nname = "fast"\ninterval_s = 0.05\n'
        'tags = ["t0", "t1", "t2"]\n' + tags
    )

    async def record() -> None:
        gateway = Gateway(load_config(config_dir))
        stop = asyncio.Event()
        task = asyncio.create_task(gateway.run(stop))
        await asyncio.sleep(1.5)
        stop.set()
        await task

    asyncio.run(record())
    model = tmp_path / "etch.npz"
    argv = ["fit", "--kind", "pca", "--config", str(config_dir), "--tool", "etch-01"]
    assert main([*argv, "--group", "fast", "--out", str(model)]) == 0
    assert "of 3 tags: t0, t1, t2" in capsys.readouterr().out
    _, stored_tags = load_model(model)
    assert stored_tags == ("t0", "t1", "t2")


def test_alarm_rows_follow_raise_and_clear_events() -> None:
    """A row is alarmed from its raise up to, not including, its clear."""
    stamps = np.arange(10, dtype=np.int64) * 1000

    def event(state: str, row: int) -> AlertEvent:
        return AlertEvent(
            tool="t",
            tag="a",
            model="pca",
            state=state,  # type: ignore[arg-type]
            severity="warning",
            ts_ns=int(stamps[row]),
            started_ns=int(stamps[row]),
            value=0.0,
            score=0.0,
            peak_score=0.0,
            raise_level=1.0,
            clear_level=0.5,
            window={},
        )

    events = [event("raised", 2), event("cleared", 5), event("raised", 8)]
    assert alarms_from_events(stamps, events).tolist() == [
        False,
        False,
        True,
        True,
        True,
        False,
        False,
        False,
        True,
        True,
    ]


@pytest.mark.skipif(
    not (SHARED_DATA / "nab").is_dir(), reason="../shared/data not found: NAB files"
)
def test_evaluate_nab_reports_the_three_profiles(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """On the NAB files the default stack yields the three normalised scores."""
    figures = run_json(capsys, "evaluate", str(SHARED_DATA / "nab"), "--json")
    assert figures["format"] == "nab"
    assert figures["f1"] is None
    for key in ("nab_standard", "nab_low_fp", "nab_low_fn"):
        assert isinstance(figures[key], float)
        assert -100.0 <= figures[key] <= 100.0


STACKS = Path(__file__).resolve().parents[1] / "config" / "stacks"


def test_the_written_out_default_stack_is_the_default() -> None:
    """config/stacks/default.toml sets exactly what evaluate runs without --stack."""
    written = load_stack(STACKS / "default.toml")
    default = Stack()

    assert written.tag_scorers == default.tag_scorers
    assert written.models == default.models
    assert written.alerts == default.alerts
    assert set(written.scorers) == set(written.tag_scorers)
    for kind in written.tag_scorers:
        params = scorer_class(kind).Params
        assert params.model_validate(written.scorers[kind]) == params(), kind


def test_the_published_pca_stack_builds_a_pca_detector() -> None:
    """config/stacks/pca-published.toml is PCA T²+Q alone with no persistence."""
    stack = load_stack(STACKS / "pca-published.toml")

    assert stack.tag_scorers == ()
    assert [model.kind for model in stack.models] == ["pca"]
    assert (stack.alerts.raise_after, stack.alerts.clear_after) == (1, 1)
    params = scorer_class("pca").Params.model_validate(stack.models[0].params)
    assert params.variance == 0.85
