"""`dlpipe predict`'s input readers, without a model: CSV columns matched by name for models with feature names
(by position otherwise), and one-line BadInputErrors naming the file for damaged or foreign files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dlpipe.errors import BadInputError
from dlpipe.predict import load_inputs

NAMES = ["alcohol", "ash", "hue"]
ROWS = np.array([[13.2, 2.1, 1.05], [12.4, 2.6, 0.9]])


def write(path: Path, frame: pd.DataFrame, header: bool = True) -> Path:
    frame.to_csv(path, index=False, header=header)
    return path


def refused(path: Path, shape=(3,), names=NAMES, drop=None) -> str:
    with pytest.raises(BadInputError) as info:
        load_inputs(path, shape, drop, names)
    message = str(info.value)
    assert "\n" not in message and str(path.name) in message
    return message


def test_columns_are_matched_by_name_in_any_order(tmp_path: Path) -> None:
    frame = pd.DataFrame(ROWS, columns=NAMES)
    in_order, _ = load_inputs(write(tmp_path / "a.csv", frame), (3,), None, NAMES)
    shuffled, _ = load_inputs(write(tmp_path / "b.csv", frame[["hue", "alcohol", "ash"]]), (3,), None, NAMES)
    assert list(in_order.columns) == NAMES
    pd.testing.assert_frame_equal(in_order, shuffled)
    assert in_order.to_numpy().tolist() == ROWS.tolist()
    labelled = frame.assign(label=[0, 1])[["label", "hue", "ash", "alcohol"]]
    dropped, _ = load_inputs(write(tmp_path / "c.csv", labelled), (3,), ["label"], NAMES)
    pd.testing.assert_frame_equal(dropped, in_order)


def test_without_a_header_or_names_columns_are_taken_by_position(tmp_path: Path) -> None:
    no_header, _ = load_inputs(write(tmp_path / "a.csv", pd.DataFrame(ROWS), header=False), (3,), None, NAMES)
    assert list(no_header.columns) == NAMES and np.allclose(no_header.to_numpy(), ROWS)
    reversed_named = write(tmp_path / "b.csv", pd.DataFrame(ROWS[:, ::-1], columns=NAMES[::-1]))
    unnamed_model, _ = load_inputs(reversed_named, (3,))  # a model without names: positional, as before
    assert isinstance(unnamed_model, np.ndarray) and unnamed_model.tolist() == ROWS[:, ::-1].astype("f4").tolist()
    np.savez(tmp_path / "x.npz", X=ROWS)
    from_npz, _ = load_inputs(tmp_path / "x.npz", (3,), None, NAMES)
    assert list(from_npz.columns) == NAMES and np.allclose(from_npz.to_numpy(), ROWS)


def test_a_header_of_numbers_equal_to_the_feature_names_is_a_header(tmp_path: Path) -> None:
    names = ["1", "2", "3"]
    path = write(tmp_path / "a.csv", pd.DataFrame(ROWS, columns=["3", "1", "2"]))
    frame, _ = load_inputs(path, (3,), None, names)
    assert len(frame) == 2 and frame.to_numpy()[:, 0].tolist() == ROWS[:, 1].tolist()


def test_missing_and_extra_columns_are_named(tmp_path: Path) -> None:
    frame = pd.DataFrame(ROWS, columns=NAMES)
    message = refused(write(tmp_path / "m.csv", frame.drop(columns=["ash"]).assign(color=1.0)))
    assert "missing column(s) ash; unexpected column(s) color (leave them out with --drop)" in message
    assert message.endswith("the model takes 3 columns by name, in any order: alcohol, ash, hue")
    message = refused(write(tmp_path / "short.csv", pd.DataFrame(ROWS[:, :2]), header=False))
    assert "input of shape (2, 2) does not fit the model; expected 3 features per row" in message
    assert "a CSV with a header row is matched by column names" in message


def test_header_only_csv_has_no_rows(tmp_path: Path) -> None:
    (tmp_path / "h.csv").write_text("alcohol,ash,hue\n")
    assert "no data rows, only a header row" in refused(tmp_path / "h.csv")
    (tmp_path / "h2.csv").write_text("label,alcohol,ash,hue\n")
    assert "no data rows" in refused(tmp_path / "h2.csv", drop=["label"])


def test_binary_garbage_as_csv_is_not_a_readable_csv(tmp_path: Path) -> None:
    (tmp_path / "g.csv").write_bytes(bytes(range(128, 256)) * 4)
    assert "not a readable CSV file" in refused(tmp_path / "g.csv")


def test_damaged_or_foreign_npz_files(tmp_path: Path) -> None:
    good = tmp_path / "good.npz"
    np.savez(good, X=np.zeros((50, 3)))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes())
    os.truncate(truncated, truncated.stat().st_size - 30)
    assert "damaged .npz archive, truncated or corrupt (BadZipFile" in refused(truncated)
    noise = tmp_path / "noise.npz"
    noise.write_bytes(np.random.default_rng(1).bytes(1000))
    message = refused(noise)
    assert "not a NumPy .npz archive (no zip header)" in message and "allow_pickle" not in message
    (tmp_path / "empty.npz").write_bytes(b"")
    assert "an empty file" in refused(tmp_path / "empty.npz")
    np.save(tmp_path / "plain.npy", np.zeros((2, 3)))
    os.replace(tmp_path / "plain.npy", tmp_path / "plain.npz")  # a .npy under an .npz name
    assert "not a NumPy .npz archive" in refused(tmp_path / "plain.npz")
    np.savez(tmp_path / "objects.npz", X=np.array([{"a": 1}, None], dtype=object))
    assert "pickled Python objects" in refused(tmp_path / "objects.npz")
    np.savez(tmp_path / "two.npz", A=np.zeros(3), B=np.zeros(3))
    assert "no array named X (arrays: A, B)" in refused(tmp_path / "two.npz")


def test_image_folder_with_other_files_is_refused_naming_them(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.full((8, 8), 255, dtype=np.uint8), mode="L").save(folder / "a.png")
    (folder / ".DS_Store").write_bytes(b"\0")  # hidden: ignored
    (folder / "sub").mkdir()  # folders: ignored
    X, files = load_inputs(folder, (1, 8, 8))
    assert files == ["a.png"] and X.shape == (1, 1, 8, 8) and float(X.max()) == 1.0
    (folder / "notes.txt").write_text("hello")
    (folder / "labels.csv").write_text("a,0\n")
    with pytest.raises(BadInputError) as info:
        load_inputs(folder, (1, 8, 8))
    assert str(info.value) == (
        f"{folder}: not image file(s) labels.csv, notes.txt; the folder must hold only images "
        f"(.bmp, .gif, .jpeg, .jpg, .png, .webp): move the others out"
    )


def test_the_served_model_takes_trailing_nan_padding_of_series_but_no_nan_inside_one() -> None:
    from dlpipe.tracking.pyfunc_model import DlpipeClassifier, InputError

    model = DlpipeClassifier.__new__(DlpipeClassifier)  # only the input check: no logged model needed
    model.input_shape, model.feature_names = (2, 5), None
    x = np.ones((2, 2, 5), dtype=np.float32)
    x[0, :, 3:] = np.nan  # a series of 3 steps, padded to 5
    model._check_finite(x)
    x[1, 0, 1] = np.nan  # a gap inside a series is not padding
    with pytest.raises(InputError, match=r"1 NaN or infinite value\(s\) \(row\(s\) 1\)"):
        model._check_finite(x)
    x[1, 0, 1], x[0, 1, 0] = 1.0, np.inf
    with pytest.raises(InputError, match=r"row\(s\) 0"):
        model._check_finite(x)
