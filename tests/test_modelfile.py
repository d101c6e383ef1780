"""Model files: round trips that continue scoring exactly, and every refusal."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from edge_models.base import Scorer
from edge_models.ewma import EwmaParams, EwmaZScore
from edge_models.modelfile import FORMAT, ModelFileError, load_model, save_model
from edge_models.pca import PcaParams, PcaT2Q

FloatArray = npt.NDArray[np.float64]
Entries = dict[str, npt.NDArray[Any]]

PCA_PARAMETERS = ("mean", "std", "loadings", "eigenvalues", "t2_limit", "q_limit")
TAGS = ("chamber_pressure", "rf_forward_power", "he_flow", "esc_temp")


def make_rows(seed: int, steps: int, k: int = len(TAGS)) -> FloatArray:
    """Return correlated rows with a few NaN cells."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(0.0, 1.0, (steps, 2)) @ rng.normal(0.0, 1.0, (2, k))
    rows += 0.3 * rng.normal(0.0, 1.0, (steps, k)) + 20.0
    rows[rng.random((steps, k)) < 0.02] = np.nan
    return rows


def fitted_pca(params: PcaParams | None = None) -> PcaT2Q:
    """Return a PCA scorer fitted on 300 rows and then scored on 37 more."""
    scorer = PcaT2Q(params or PcaParams(), len(TAGS))
    scorer.fit(make_rows(1, 300))
    more = make_rows(2, 37)
    scorer.score(more, np.isfinite(more))
    return scorer


def saved_pca(tmp_path: Path) -> Path:
    """Save a fitted PCA scorer to ``tmp_path / "model.npz"`` and return the path."""
    path = tmp_path / "model.npz"
    save_model(path, fitted_pca(), TAGS)
    return path


def read_entries(path: Path) -> Entries:
    """Return every array of the npz at ``path``."""
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def encode_header(header: Any) -> npt.NDArray[np.uint8]:
    """Return ``header`` as the JSON bytes array a model file stores."""
    return np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)


def read_header(path: Path) -> dict[str, Any]:
    """Return the decoded JSON header of the model file at ``path``."""
    header: dict[str, Any] = json.loads(read_entries(path)["header"].tobytes())
    return header


def rewrite(path: Path, change: Callable[[Entries], None]) -> None:
    """Apply ``change`` to the file's entries in place and write them back."""
    entries = read_entries(path)
    change(entries)
    np.savez(path, allow_pickle=False, **entries)


def edit_header(**fields: Any) -> Callable[[Entries], None]:
    """Return a change that sets (or, for ``None``, removes) header fields."""

    def change(entries: Entries) -> None:
        header = json.loads(entries["header"].tobytes())
        for key, value in fields.items():
            if value is None:
                header.pop(key)
            else:
                header[key] = value
        entries["header"] = encode_header(header)

    return change


def drop(key: str) -> Callable[[Entries], None]:
    """Return a change that removes the entry ``key``."""

    def change(entries: Entries) -> None:
        del entries[key]

    return change


def assert_refused(path: Path, match: str, **kwargs: Any) -> None:
    """Assert that loading ``path`` fails with a one-line message naming it."""
    with pytest.raises(ModelFileError, match=match) as caught:
        load_model(path, **kwargs)
    message = str(caught.value)
    assert str(path) in message
    assert "\n" not in message
    assert isinstance(caught.value, ValueError)
    assert caught.value.path == path


def continue_both(original: Scorer, loaded: Scorer, seed: int) -> None:
    """Assert that both scorers score the same new rows identically."""
    rows = make_rows(seed, 120, original.k)
    valid = np.isfinite(rows)
    np.testing.assert_array_equal(
        loaded.score(rows, valid), original.score(rows, valid)
    )


def test_pca_round_trip_continues_exactly(tmp_path: Path) -> None:
    """A loaded PCA scorer has the same params and tags and continues bit for bit."""
    original = fitted_pca(PcaParams(median_window=4, confidence=0.99))
    path = tmp_path / "etch-07.npz"
    save_model(path, original, TAGS)

    loaded, tags = load_model(path)
    assert isinstance(loaded, PcaT2Q)
    assert tags == TAGS
    assert loaded.params == original.params
    assert loaded.fitted
    for key, array in original.parameters().items():
        np.testing.assert_array_equal(loaded.parameters()[key], array)
    continue_both(original, loaded, seed=3)


def test_ewma_round_trip_continues_exactly(tmp_path: Path) -> None:
    """An EWMA scorer (state only, no parameters) round-trips and continues exactly."""
    original = EwmaZScore(EwmaParams(alpha=0.1, warmup=5, clip=None), 3)
    rows = make_rows(4, 200, 3)
    original.score(rows, np.isfinite(rows))
    path = tmp_path / "ewma.npz"
    save_model(path, original, TAGS[:3])

    loaded, tags = load_model(path, tags=TAGS[:3])
    assert isinstance(loaded, EwmaZScore)
    assert tags == TAGS[:3]
    assert loaded.params == original.params
    assert not any(name.startswith("p.") for name in read_entries(path))
    continue_both(original, loaded, seed=5)


def test_header_records_format_kind_params_and_time(tmp_path: Path) -> None:
    """The header is JSON with the format, kind, params, width, tags and UTC time."""
    path = saved_pca(tmp_path)
    header = read_header(path)
    assert header["format"] == FORMAT == "edge-models/1"
    assert header["kind"] == "pca"
    assert header["params"] == PcaParams().model_dump()
    assert header["k"] == len(TAGS)
    assert header["tags"] == list(TAGS)
    created = datetime.fromisoformat(header["created"])
    assert created.utcoffset() == UTC.utcoffset(None)
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60
    assert set(read_entries(path)) == {
        "header",
        *(f"p.{key}" for key in PCA_PARAMETERS),
        "s.t2",
        "s.q",
    }


def test_header_as_a_string_array_is_accepted(tmp_path: Path) -> None:
    """A header stored as a 0-d string array loads like the bytes form."""
    path = saved_pca(tmp_path)
    rewrite(path, lambda e: e.update(header=np.array(e["header"].tobytes().decode())))
    scorer, tags = load_model(path)
    assert isinstance(scorer, PcaT2Q)
    assert tags == TAGS


def test_newer_format_is_refused_with_upgrade_advice(tmp_path: Path) -> None:
    """A file of a newer format version is refused, saying to upgrade."""
    path = saved_pca(tmp_path)
    rewrite(path, edit_header(format="edge-models/2"))
    assert_refused(path, r"edge-models/2 is newer .* upgrade edge-gateway")


def test_missing_file_is_refused(tmp_path: Path) -> None:
    """A path with no file is refused."""
    assert_refused(tmp_path / "absent.npz", "no such file")


def test_text_file_is_refused(tmp_path: Path) -> None:
    """A file that is not an npz archive is refused."""
    path = tmp_path / "model.npz"
    path.write_text("mean,std\n1,2\n")
    assert_refused(path, "not an npz archive")


def test_npy_file_is_refused(tmp_path: Path) -> None:
    """A single .npy array is refused as not an npz archive."""
    path = tmp_path / "model.npz"
    with path.open("wb") as file:
        np.save(file, np.zeros(3))
    assert_refused(path, "single .npy array")


def test_truncated_archive_is_refused(tmp_path: Path) -> None:
    """An archive cut short (a partial copy) is refused."""
    path = saved_pca(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_refused(path, "npz")


def test_pickled_entry_is_refused(tmp_path: Path) -> None:
    """An entry that needs unpickling is refused, never unpickled."""
    path = saved_pca(tmp_path)
    entries = read_entries(path)
    entries["s.t2"] = np.array([{"code": "run"}], dtype=object)
    np.savez(path, allow_pickle=True, **entries)
    assert_refused(path, "unreadable npz entry")


def test_missing_header_is_refused(tmp_path: Path) -> None:
    """An npz without a header is refused as not a model file."""
    path = saved_pca(tmp_path)
    rewrite(path, drop("header"))
    assert_refused(path, "no header")


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (np.frombuffer(b"{not json", dtype=np.uint8), "not JSON"),
        (np.frombuffer(b"\xff\xfe", dtype=np.uint8), "not JSON"),
        (encode_header(["edge-models/1"]), "not a JSON object"),
        (encode_header({"format": "tflite/1"}), "is not edge-models/N"),
        (encode_header({"format": "edge-models/1"}), "lacks kind, params"),
    ],
)
def test_malformed_header_is_refused(
    tmp_path: Path, header: npt.NDArray[Any], match: str
) -> None:
    """A header that is not a JSON object of the edge-models format is refused."""
    path = saved_pca(tmp_path)
    rewrite(path, lambda entries: entries.update(header=header))
    assert_refused(path, match)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"kind": "isolation_forest"}, "unknown scorer kind 'isolation_forest'"),
        ({"kind": 3}, "kind must be a name"),
        ({"params": {"variance": 2.0, "window": 5}}, "invalid pca params: variance"),
        ({"params": []}, "params an object"),
        ({"k": 3}, "tags must be 3 distinct names"),
        ({"k": 0}, "k must be a positive integer"),
        ({"k": True}, "k must be a positive integer"),
        ({"tags": ["a", "a", "b", "c"]}, "distinct names"),
        ({"tags": "abcd"}, "distinct names"),
        ({"created": None}, "lacks created"),
    ],
)
def test_bad_header_fields_are_refused(
    tmp_path: Path, fields: dict[str, Any], match: str
) -> None:
    """A header with an unknown kind, bad params, or tags that do not fit is refused."""
    path = saved_pca(tmp_path)
    rewrite(path, edit_header(**fields))
    assert_refused(path, match)


def test_tags_other_than_expected_are_refused(tmp_path: Path) -> None:
    """Loading for other columns than the file was fitted on is refused."""
    path = saved_pca(tmp_path)
    assert_refused(path, "fitted on tags", tags=TAGS[::-1])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda e: e.update({"p.mean": np.zeros(3)}), "pca arrays rejected: .*mean"),
        (drop("p.q_limit"), "lack q_limit"),
        (drop("s.q"), "state lacks q"),
        (lambda e: e.update({"s.t2": np.full(4, -1.0)}), "non-negative"),
        (lambda e: e.update({"p.std": np.array(["a", "b", "c", "d"])}), "rejected"),
        (lambda e: e.update({"extra": np.zeros(1)}), "unexpected entries"),
    ],
)
def test_bad_arrays_are_refused(
    tmp_path: Path, change: Callable[[Entries], None], match: str
) -> None:
    """Arrays the scorer refuses, or entries that belong to nothing, are refused."""
    path = saved_pca(tmp_path)
    rewrite(path, change)
    assert_refused(path, match)


def test_parameters_on_a_scorer_without_any_are_refused(tmp_path: Path) -> None:
    """An EWMA file carrying parameters (it learns online only) is refused."""
    path = tmp_path / "ewma.npz"
    save_model(path, EwmaZScore(EwmaParams(), 2), TAGS[:2])
    rewrite(path, lambda entries: entries.update({"p.mean": np.zeros(2)}))
    assert_refused(path, "ewma has no fitted parameters")


def test_save_refuses_unfitted_scorer_and_wrong_tags(tmp_path: Path) -> None:
    """Saving an unfitted scorer, or with tags that do not fit ``k``, is refused."""
    path = tmp_path / "model.npz"
    with pytest.raises(ValueError, match="not fitted"):
        save_model(path, PcaT2Q(PcaParams(), len(TAGS)), TAGS)
    with pytest.raises(ValueError, match="needs 4 distinct tags"):
        save_model(path, fitted_pca(), TAGS[:3])
    with pytest.raises(ValueError, match="needs 4 distinct tags"):
        save_model(path, fitted_pca(), ("a", "a", "b", "c"))
    assert list(tmp_path.iterdir()) == []


def test_save_replaces_atomically_and_leaves_no_temporary(tmp_path: Path) -> None:
    """Saving over a model replaces it whole and leaves only the model file."""
    path = tmp_path / "model.npz"
    save_model(path, EwmaZScore(EwmaParams(), len(TAGS)), TAGS)
    save_model(path, fitted_pca(), TAGS)
    assert list(tmp_path.iterdir()) == [path]
    assert isinstance(load_model(path)[0], PcaT2Q)


def test_failed_save_leaves_no_temporary(tmp_path: Path) -> None:
    """A save whose final rename fails removes its temporary file."""
    target = tmp_path / "model.npz"
    target.mkdir()
    (target / "keep").write_text("occupied")
    with pytest.raises(OSError, match=r"model\.npz"):
        save_model(target, fitted_pca(), TAGS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]
    assert [p.name for p in target.iterdir()] == ["keep"]
