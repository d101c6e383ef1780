"""Offline evaluation of detectors on labeled corpora, by the published rules.

- :mod:`edge_models.evaluation.data`: loaders for SKAB experiments and NAB series.
- :mod:`edge_models.evaluation.skab`: the SKAB protocol (pooled F1/FAR/MAR and
  NAB-style change-point scores).
- :mod:`edge_models.evaluation.nab`: the NAB scoring rules and threshold choice.

The rules are those of ``EVALUATION.md`` in the evaluation data folder.
"""

from edge_models.evaluation.data import (
    EvaluationDataError,
    NabFile,
    SkabFile,
    detect_format,
    load_nab_corpus,
    load_nab_file,
    load_skab_file,
    load_skab_folder,
)
from edge_models.evaluation.nab import NabResult, best_threshold, nab_result, score_file
from edge_models.evaluation.skab import TRAIN_ROWS, SkabResult, skab_result, split

__all__ = [
    "TRAIN_ROWS",
    "EvaluationDataError",
    "NabFile",
    "NabResult",
    "SkabFile",
    "SkabResult",
    "best_threshold",
    "detect_format",
    "load_nab_corpus",
    "load_nab_file",
    "load_skab_file",
    "load_skab_folder",
    "nab_result",
    "score_file",
    "skab_result",
    "split",
]
