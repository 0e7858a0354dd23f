"""Store validation: one clear line per broken rule, a non-zero exit, the input never modified."""

from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import tree_digest

from offline_chunk.data.store import StepData, open_store, write_store
from offline_chunk.errors import DataError
from offline_chunk.harness.cli import main

N = 10


def valid_arrays() -> dict[str, np.ndarray]:
    rows = np.arange(N, dtype=np.float32)
    return {
        "data/obs": np.stack([rows, rows**2], axis=1),
        "data/action": np.stack([rows, -rows], axis=1) / N,
        "data/reward": rows / 2,
        "data/terminal": np.arange(N) == 4,
        "meta/episode_ends": np.array([5, N], np.int64),
    }


def write_raw(path: Path, arrays: dict, attrs: dict | None = None) -> Path:
    """Write arrays as given, bypassing our validation, the way a foreign tool might."""
    group = zarr.open_group(store=str(path), mode="w")
    for name, value in arrays.items():
        group.create_array(name, shape=value.shape, dtype=value.dtype)[...] = value
    group.attrs.update(attrs or {})
    return path


def inspect_fails(path: Path, capsys, *fragments: str) -> str:
    """`offline_chunk inspect` exits 2 with one stderr line containing every fragment; input untouched."""
    before = tree_digest(path) if path.is_dir() else None
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for fragment in (str(path), *fragments):
        assert fragment in err, (fragment, err)
    if before is not None:
        assert tree_digest(path) == before
    return err


def test_valid_store_opens_and_is_not_modified(tmp_path, capsys):
    path = write_raw(tmp_path / "ok.zarr", valid_arrays())
    before = tree_digest(path)
    data = open_store(path)
    assert main(["inspect", str(path)]) == 0
    assert "rows         10" in capsys.readouterr().out
    assert tree_digest(path) == before
    np.testing.assert_array_equal(data.episode_ends, [5, 10])
    np.testing.assert_array_equal(data.obs[:, 1], np.arange(N) ** 2)


@pytest.mark.parametrize(
    "missing", ["data/action", "data/reward", "data/terminal", "meta/episode_ends", "data/obs"]
)
def test_missing_required_array(tmp_path, capsys, missing):
    arrays = valid_arrays()
    del arrays[missing]
    inspect_fails(write_raw(tmp_path / "s.zarr", arrays), capsys, missing, "required array is missing")


def test_lengths_disagree(tmp_path, capsys):
    arrays = valid_arrays()
    arrays["data/reward"] = arrays["data/reward"][:-1]
    inspect_fails(
        write_raw(tmp_path / "s.zarr", arrays), capsys, "data/reward", "9 rows", "data/action has 10"
    )


@pytest.mark.parametrize(
    "ends, rule",
    [
        ([6, 4, N], "not strictly increasing at entry 1"),
        ([5, 5, N], "entry 1 makes an empty episode"),
        ([0, N], "entry 0 makes an empty episode"),
        ([5, 8], "must equal the number of rows 10"),
        ([], "is empty"),
    ],
)
def test_bad_episode_ends(tmp_path, capsys, ends, rule):
    arrays = {**valid_arrays(), "meta/episode_ends": np.array(ends, np.int64)}
    inspect_fails(write_raw(tmp_path / "s.zarr", arrays), capsys, "meta/episode_ends", rule)


@pytest.mark.parametrize(
    "name, row, value", [("data/obs", 7, np.nan), ("data/action", 2, np.inf), ("data/reward", 4, -np.inf)]
)
def test_non_finite_values(tmp_path, capsys, name, row, value):
    arrays = valid_arrays()
    arrays[name][row] = value
    inspect_fails(write_raw(tmp_path / "s.zarr", arrays), capsys, name, f"row {row}", "NaN or inf")


def test_wrong_rank(tmp_path, capsys):
    arrays = {**valid_arrays(), "data/action": np.zeros(N, np.float32)}
    inspect_fails(write_raw(tmp_path / "s.zarr", arrays), capsys, "data/action", "rank 1", "expected rank 2")


def test_wrong_dtype(tmp_path, capsys):
    arrays = {**valid_arrays(), "data/terminal": np.zeros(N, np.float32)}
    inspect_fails(write_raw(tmp_path / "s.zarr", arrays), capsys, "data/terminal", "dtype float32", "bool")


def test_action_outside_declared_bounds(tmp_path, capsys):
    arrays = valid_arrays()
    arrays["data/action"][3, 1] = 1.5
    path = write_raw(tmp_path / "s.zarr", arrays, {"action_low": [-1, -1], "action_high": [1, 1]})
    inspect_fails(path, capsys, "data/action", "row 3", "action[1] = 1.5", "[-1, 1]")


def test_not_a_zarr_store(tmp_path, capsys):
    folder = tmp_path / "folder.zarr"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    inspect_fails(folder, capsys, "is not a zarr store")
    text_file = tmp_path / "file.zarr"
    text_file.write_text("hello")
    inspect_fails(text_file, capsys, "is not a zarr store")


def _chunk_files(path: Path, name: str) -> list[Path]:
    return sorted(p for p in (path / name / "c").rglob("*") if p.is_file())


def as_step_data(arrays: dict, attrs: dict | None = None) -> StepData:
    return StepData(
        observations={"obs": arrays["data/obs"]},
        action=arrays["data/action"],
        reward=arrays["data/reward"],
        terminal=arrays["data/terminal"],
        episode_ends=arrays["meta/episode_ends"],
        attrs=attrs or {},
    )


@pytest.mark.parametrize("name", ["data/terminal", "data/reward", "data/action"])
def test_missing_chunk_in_our_store_is_truncation(tmp_path, capsys, name):
    path = write_store(as_step_data(valid_arrays()), tmp_path / "s.zarr")
    _chunk_files(path, name)[0].unlink()
    inspect_fails(path, capsys, name, "truncated on disk", "1 of 1 chunks missing")


def test_foreign_store_may_skip_fill_value_chunks(tmp_path):
    """zarr 3 writers skip all-fill chunks by default: an all-zero reward is not a truncation there."""
    arrays = {**valid_arrays(), "data/reward": np.zeros(N, np.float32)}
    path = write_raw(tmp_path / "s.zarr", arrays)
    assert _chunk_files(path, "data/reward") == []
    np.testing.assert_array_equal(open_store(path).reward, np.zeros(N))


def test_chunk_cut_short_is_truncation(tmp_path, capsys):
    path = write_raw(tmp_path / "s.zarr", valid_arrays())
    chunk = _chunk_files(path, "data/obs")[0]
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    inspect_fails(path, capsys, "data/obs", "truncated or corrupt on disk")


def test_debug_shows_the_exception(tmp_path):
    with pytest.raises(DataError):
        main(["--debug", "inspect", str(tmp_path / "absent.zarr")])


def test_invalid_data_writes_nothing(tmp_path):
    data = as_step_data({**valid_arrays(), "meta/episode_ends": np.array([5, 9])})
    out = tmp_path / "out.zarr"
    with pytest.raises(DataError, match="must equal the number of rows"):
        write_store(data, out)
    assert list(tmp_path.iterdir()) == []


def test_write_is_atomic_and_refuses_to_overwrite(tmp_path):
    data = as_step_data(valid_arrays(), {"env_id": "toy-v0"})
    out = write_store(data, tmp_path / "out.zarr")
    with pytest.raises(DataError, match="already exists"):
        write_store(data, out)
    reread = open_store(out)
    assert reread.attrs["env_id"] == "toy-v0" and reread.attrs["obs_keys"] == ["obs"]
    for key in ("action", "reward", "terminal", "episode_ends"):
        np.testing.assert_array_equal(getattr(reread, key), getattr(data, key))
    assert [p.name for p in tmp_path.iterdir()] == ["out.zarr"]  # no temporary left behind


def test_data_error_survives_pickling():
    """Errors raised in worker processes (the OGBench generator) cross process boundaries by pickle."""
    import pickle

    err = DataError("s.zarr", "is bad", "data/action", 3)
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) == "s.zarr: array 'data/action': row 3: is bad"
    assert (again.path, again.rule, again.array, again.row) == ("s.zarr", "is bad", "data/action", 3)
