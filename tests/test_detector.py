"""The detector: models of a poll group, fitted on its first rows or from a file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_models.base import SCORER_KINDS, scorer_class
from edge_models.modelfile import save_model
from edge_models.pca import PcaParams, PcaT2Q
from gateway.config import ConfigError, load_config
from gateway.config.models import AlertRule, GatewayIdentity, StoreConfig
from gateway.detector import Detector, ModelPlan
from gateway.pipeline import ToolPipeline
from gateway.store import Store

NS = 1_000_000_000
TAGS = ("a", "b", "c")
RULE = AlertRule(raise_after=2, clear_after=2, cooldown_s=0.0)
IDENTITY = GatewayIdentity(site="s", id="g")


def normal_rows(n: int, seed: int = 0) -> np.ndarray:
    """Three correlated tags: b follows a, c is independent noise."""
    rng = np.random.default_rng(seed)
    a = rng.normal(10.0, 1.0, n)
    return np.column_stack(
        [a, 2.0 * a + rng.normal(0, 0.1, n), rng.normal(5.0, 0.5, n)]
    )


def pca_detector(fit_rows: int) -> Detector:
    plan = ModelPlan("chamber", "pca", PcaParams(median_window=1), (0, 1, 2))
    return Detector("etch-01", TAGS, [RULE] * 3, RULE, [plan], fit_rows)


def stamps(start: int, n: int) -> np.ndarray:
    return (start + np.arange(n, dtype=np.int64)) * NS


def test_a_model_scores_nothing_until_fitted_on_the_first_rows() -> None:
    """Rows before fit_rows are learned from; scoring starts right after them."""
    detector = pca_detector(fit_rows=100)
    rows = normal_rows(160)
    good = np.ones(rows.shape, dtype=bool)

    first = detector.process(stamps(0, 60), rows[:60], good[:60])
    second = detector.process(stamps(60, 100), rows[60:], good[60:])

    assert np.isnan(first.row_scores).all()
    assert np.isnan(second.row_scores[:40]).all()
    assert np.isfinite(second.row_scores[40:]).all()
    assert first.events == second.events == []


def test_a_broken_correlation_raises_an_alert_named_after_the_model() -> None:
    """Once fitted, a relationship break between tags raises the model's alert."""
    detector = pca_detector(fit_rows=200)
    rows = normal_rows(300)
    rows[250:260, 1] -= 3.0  # b leaves its line with a; each alone stays in range
    good = np.ones(rows.shape, dtype=bool)

    detection = detector.process(stamps(0, 300), rows, good)
    raised = [e for e in detection.events if e.state == "raised"]
    assert [(e.tag, e.model) for e in raised] == [("chamber", "pca")]
    assert 250 * NS <= raised[0].ts_ns <= 252 * NS


def test_fit_on_rows_equals_learning_them_in_the_stream() -> None:
    """Fitting a detector explicitly gives the scores the fitting-in-stream gives."""
    rows = normal_rows(400, seed=3)
    good = np.ones(rows.shape, dtype=bool)
    streamed = pca_detector(fit_rows=200).process(stamps(0, 400), rows, good)

    fitted = pca_detector(fit_rows=200)
    fitted.fit(rows[:200])
    direct = fitted.process(stamps(200, 200), rows[200:], good[200:])
    np.testing.assert_array_equal(direct.row_scores, streamed.row_scores[200:])


TOOL = """
fit_rows = 50

[driver]
kind = "simulated"

[[poll_groups]]
name = "fast"
interval_s = 1.0
tags = ["a", "b", "c"]

[[poll_groups]]
name = "slow"
interval_s = 5.0
tags = ["d"]

[[tags]]
name = "a"
source = { level = 10.0 }

[[tags]]
name = "b"
source = { level = 20.0 }

[[tags]]
name = "c"
source = { level = 5.0 }

[[tags]]
name = "d"
source = { level = 1.0 }
"""


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A configuration folder with one four-tag simulated tool."""
    (tmp_path / "tools").mkdir()
    (tmp_path / "gateway.toml").write_text(
        '[gateway]\nsite = "s"\nid = "g"\n[mqtt]\nenabled = false\n'
    )
    (tmp_path / "tools" / "etch-01.toml").write_text(TOOL)
    return tmp_path


def with_models(config_dir: Path, models: str) -> list[str]:
    """Add ``models`` to the tool file; return the loader's issues (none: [])."""
    path = config_dir / "tools" / "etch-01.toml"
    path.write_text(TOOL + models)
    try:
        load_config(config_dir)
    except ConfigError as exc:
        return [str(issue) for issue in exc.issues]
    return []


@pytest.mark.parametrize(
    ("models", "issue"),
    [
        (
            '[[models]]\nname = "m"\nkind = "iforest"\ngroup = "fast"\n',
            f'models[0].kind: must be one of {", ".join(SCORER_KINDS)}, got "iforest"',
        ),
        (
            '[[models]]\nname = "m"\nkind = "pca"\ngroup = "fastest"\n',
            'models[0].group: no poll group named "fastest"',
        ),
        (
            '[[models]]\nname = "m"\nkind = "pca"\ngroup = "fast"\ntags = ["a", "d"]\n',
            'models[0].tags[1]: "d" is not a tag of group "fast"',
        ),
        (
            '[[models]]\nname = "a"\nkind = "pca"\ngroup = "fast"\n',
            'models[0].name: "a" is already a model or tag name',
        ),
        (
            '[[models]]\nname = "m"\nkind = "pca"\ngroup = "fast"\n'
            "params = { variance = 2.0 }\n",
            "models[0].params.variance: must be < 1.0, got 2.0",
        ),
    ],
)
def test_model_entries_are_checked_with_one_line_each(
    config_dir: Path, models: str, issue: str
) -> None:
    """Each broken [[models]] rule gives one line naming the key."""
    assert with_models(config_dir, models) == [f"tools/etch-01.toml: {issue}"]


def test_a_multivariate_scorer_on_a_tag_is_refused(config_dir: Path) -> None:
    """A tag may list univariate scorers only; pca belongs under [[models]]."""
    path = config_dir / "tools" / "etch-01.toml"
    tagged = 'scorers = ["pca"]\nsource = { level = 10.0 }'
    path.write_text(TOOL.replace("source = { level = 10.0 }", tagged))
    with pytest.raises(ConfigError) as caught:
        load_config(config_dir)
    assert [str(i) for i in caught.value.issues] == [
        'tools/etch-01.toml: tags[0].scorers[0]: "pca" scores several tags '
        "together: configure it under [[models]]"
    ]


def test_a_model_file_must_exist_and_match_the_tags(config_dir: Path) -> None:
    """A missing file, or one fitted on other tags, is a configuration error."""
    entry = '[[models]]\nname = "m"\nkind = "pca"\ngroup = "fast"\nfile = "m.npz"\n'
    (missing,) = with_models(config_dir, entry)
    assert missing.startswith("tools/etch-01.toml: models[0].file: ")
    assert "m.npz" in missing

    scorer = PcaT2Q(PcaParams(), 3)
    scorer.fit(normal_rows(200))
    save_model(config_dir / "m.npz", scorer, ["x", "y", "z"])
    (mismatch,) = with_models(config_dir, entry)
    assert mismatch.endswith("was fitted on tags x, y, z, not a, b, c")

    save_model(config_dir / "m.npz", scorer, ["a", "b", "c"])
    assert with_models(config_dir, entry) == []


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A store closed after the test."""
    opened = Store.open(tmp_path / "db" / "gateway.db", StoreConfig())
    yield opened
    opened.close()


def test_a_model_file_scores_from_the_first_row(config_dir: Path, store: Store) -> None:
    """A group whose model comes from a file scores at once, without a fit."""
    scorer = PcaT2Q(PcaParams(median_window=1), 3)
    scorer.fit(normal_rows(200))
    save_model(config_dir / "m.npz", scorer, ["a", "b", "c"])
    with_models(
        config_dir,
        '[[models]]\nname = "m"\nkind = "pca"\ngroup = "fast"\nfile = "m.npz"\n',
    )
    tool = load_config(config_dir).tools[0]
    pipeline = ToolPipeline(tool, IDENTITY, "e", store, 60.0, False)
    detector = pipeline._plans["fast"].detector
    rows = normal_rows(5, seed=9)
    detection = detector.process(stamps(0, 5), rows, np.ones(rows.shape, dtype=bool))
    assert np.isfinite(detection.row_scores).all()


def test_fitted_parameters_survive_a_restart(config_dir: Path, store: Store) -> None:
    """A model fitted in the stream is restored fitted, not fitted again."""
    with_models(config_dir, '[[models]]\nname = "m"\nkind = "cusum"\ngroup = "fast"\n')
    tool = load_config(config_dir).tools[0]
    first = ToolPipeline(tool, IDENTITY, "e", store, 60.0, False)
    detector = first._plans["fast"].detector
    rows = normal_rows(80)
    detector.process(stamps(0, 80), rows, np.ones(rows.shape, dtype=bool))
    first.save_state()
    store.flush()

    second = ToolPipeline(tool, IDENTITY, "e", store, 60.0, False)
    assert second.restore_state() >= 3  # parameters, scorer state, alert state
    part = next(p for p in second._plans["fast"].detector._parts if p.plan.name == "m")
    assert part.scorer.fitted
    assert isinstance(part.scorer, scorer_class("cusum"))
