"""Image folders (`data.name: images`): class sub-folders of PNG/JPEG images of any size decoded once into a uint8
cache keyed by content; bad files named in one line (exit 2 from the check stage, before any output is touched); an
added image changes the content hash the check stage records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers.images import COLOURS, make_folder
from PIL import Image

from dlpipe.config import load_params
from dlpipe.data import image_folder
from dlpipe.data.image_folder import decode_file, list_folder, load_folder
from dlpipe.errors import ConfigError, DataError
from dlpipe.paths import ProjectPaths
from dlpipe.stages import check


def test_images_of_any_size_become_uint8_squares_of_their_class(tmp_path: Path) -> None:
    folder, X, digest = load_folder(make_folder(tmp_path / "imgs"), 8, 3, tmp_path / "cache")
    assert folder.class_names == ("blue", "green", "red") and list(folder.class_counts()) == [5, 5, 5]
    assert X.shape == (15, 3, 8, 8) and X.dtype == np.uint8 and len(digest) == 64
    dominant = X.reshape(15, 3, -1).mean(axis=2).argmax(axis=1)  # blue -> channel 2, green -> 1, red -> 0
    assert list(dominant) == [2] * 5 + [1] * 5 + [0] * 5
    gray = load_folder(tmp_path / "imgs", 8, 1, None)[1]
    assert gray.shape == (15, 1, 8, 8) and gray.dtype == np.uint8


def test_the_shorter_side_is_resized_and_the_centre_cropped(tmp_path: Path) -> None:
    pixels = np.zeros((10, 60), dtype=np.uint8)  # 60 wide, 10 high: black, a white band at 20-40, black
    pixels[:, 20:40] = 255
    Image.fromarray(pixels, "L").save(tmp_path / "wide.png")
    out = decode_file(tmp_path / "wide.png", 5, 1)
    assert out.shape == (1, 5, 5) and out.min() >= 250  # only the centre (25-35, inside the white band) is kept


def test_a_second_load_reads_the_cache_and_an_added_image_is_decoded_again(tmp_path: Path, monkeypatch) -> None:
    root = make_folder(tmp_path / "imgs")
    _, first, digest = load_folder(root, 8, 3, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("images-*.npz"))) == 1
    monkeypatch.setattr(image_folder, "decode_folder", lambda *a: pytest.fail("decoded again"))
    _, cached, same = load_folder(root, 8, 3, tmp_path / "cache")
    assert same == digest and np.array_equal(cached, first)
    monkeypatch.undo()
    Image.new("RGB", (20, 20), COLOURS["red"]).save(root / "red" / "new.png")
    folder, X, changed = load_folder(root, 8, 3, tmp_path / "cache")
    assert changed != digest and len(X) == 16 and folder.class_counts()[2] == 6


def png_rgb16(path: Path, value: int, side: int = 4) -> Path:
    """A 16-bit-per-channel RGB PNG written by hand (Pillow does not write them)."""
    import struct
    import zlib

    rows = b"".join(b"\0" + np.full((side, 3), value, dtype=">u2").tobytes() for _ in range(side))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)))
    path.write_bytes(path.read_bytes() + chunk(b"IEND", b""))
    return path


def test_16_bit_rgb_palette_and_alpha_images_are_converted(tmp_path: Path) -> None:
    assert (decode_file(png_rgb16(tmp_path / "deep.png", 0xABCD), 4, 3) == 0xAB).all()  # scaled, not clipped
    Image.new("RGBA", (6, 6), (10, 20, 30, 0)).save(tmp_path / "alpha.png")
    assert decode_file(tmp_path / "alpha.png", 4, 3)[:, 0, 0].tolist() == [10, 20, 30]  # alpha dropped
    Image.new("RGB", (6, 6), (204, 0, 0)).convert("P").save(tmp_path / "palette.png")
    assert decode_file(tmp_path / "palette.png", 4, 3)[:, 0, 0].tolist() == [204, 0, 0]


def bad_files(root: Path) -> dict[str, str]:
    """One of each kind of bad file, by path relative to `root`, with the reason the error gives."""
    (root / "red" / "notes.png").write_text("not an image")
    good = root / "red" / "001.png"
    (root / "red" / "cut.png").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    Image.new("CMYK", (12, 12), (0, 255, 255, 0)).save(root / "green" / "print.jpg")
    Image.fromarray(np.full((12, 12), 40000, dtype=np.uint16)).save(root / "blue" / "deep.png")
    Image.new("RGB", (12, 12)).save(root / "blue" / "old.gif")
    return {
        "red/notes.png": "not an image",
        "red/cut.png": "unreadable",
        "green/print.jpg": "CMYK image",
        "blue/deep.png": "more than 8 bits per channel",
        "blue/old.gif": "a GIF image, not PNG or JPEG",
    }


def test_every_bad_file_is_named_in_one_line(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "imgs")
    expected = bad_files(root)
    with pytest.raises(DataError) as info:
        load_folder(root, 8, 3, tmp_path / "cache")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{root}: 5 bad image file(s) of 20: ")
    for rel, reason in expected.items():
        assert f"{rel} ({reason}" in message, (rel, message)
    assert not (tmp_path / "cache").exists()  # nothing cached from a folder with bad files


def test_folder_layout_problems_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.images\.path: no such folder"):
        list_folder(tmp_path / "nowhere")
    root = make_folder(tmp_path / "imgs")
    (root / ".DS_Store").write_bytes(b"\0")  # hidden: ignored
    (root / "red" / ".thumb").write_bytes(b"\0")
    assert len(list_folder(root).files) == 15
    (root / "stray.png").write_bytes(b"x")
    with pytest.raises(DataError, match=r"file\(s\) outside a class folder: stray.png"):
        list_folder(root)
    (root / "stray.png").unlink()
    (root / "empty").mkdir()
    with pytest.raises(DataError, match=r"class folder\(s\) without images: empty"):
        list_folder(root)


def write_project(root: Path, images: dict) -> ProjectPaths:
    root.mkdir(parents=True, exist_ok=True)
    params = {"data": {"name": "images", "images": images, "folds": 2}, "architectures": ["cnn"]}
    params["baselines"] = {"models": []}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return ProjectPaths(root)


def test_params_name_the_dotted_key(tmp_path: Path) -> None:
    cases = {
        "data.images.path: required when data.name is 'images'": {},
        "data.images.channels": {"path": "imgs", "channels": "cmyk"},
        "data.images.size": {"path": "imgs", "size": 2},
    }
    for expected, images in cases.items():
        paths = write_project(tmp_path / "p", images)
        with pytest.raises(ConfigError) as info:
            load_params(paths.params)
        assert expected in str(info.value)
    paths = write_project(tmp_path / "p", {"path": "imgs/cats and dogs"})
    assert load_params(paths.params).registered_model_name == "dlpipe-images-cats-and-dogs"


def test_check_stage_records_the_folder_hash_and_an_added_image_changes_it(tmp_path: Path) -> None:
    paths = write_project(tmp_path / "p", {"path": "imgs", "size": 8})
    root = make_folder(paths.root / "imgs", per_class=10)
    (paths.root / ".dvc" / "tmp").mkdir(parents=True)  # a DVC project: the stamp (fast path) is written
    first = check.run(paths.params, paths)
    assert first == {"images": {"path": "imgs", "sha256": first["images"]["sha256"]}}
    assert json.loads(paths.inputs.read_text()) == first
    assert len(list((paths.downloads / "image-cache").glob("images-*.npz"))) == 1  # fetch reads this
    assert check.run(paths.params, paths) == first
    Image.new("RGB", (30, 20), COLOURS["blue"]).save(root / "blue" / "added.jpg")
    second = check.run(paths.params, paths)
    assert second["images"]["sha256"] != first["images"]["sha256"]


def test_check_stage_exits_2_naming_the_bad_file_before_any_output_is_touched(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = write_project(tmp_path / "p", {"path": "imgs", "size": 8})
    root = make_folder(paths.root / "imgs", per_class=10)
    (root / "green" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    paths.raw.mkdir(parents=True)
    (paths.raw / "dataset.npz").write_bytes(b"kept")
    monkeypatch.setenv("DLPIPE_ROOT", str(paths.root))
    code = check.main()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "green/broken.jpg (" in err[0] and err[0].startswith("dlpipe check: error")
    assert (paths.raw / "dataset.npz").read_bytes() == b"kept" and not paths.inputs.exists()


def test_dlpipe_check_decodes_the_folder_as_the_stage_does(tmp_path: Path, capsys, monkeypatch) -> None:
    from dlpipe import cli

    paths = write_project(tmp_path / "p", {"path": "imgs", "size": 8})
    root = make_folder(paths.root / "imgs", per_class=10)
    monkeypatch.setenv("DLPIPE_ROOT", str(paths.root))
    assert cli.main(["check", str(paths.params)]) == 0
    Image.new("CMYK", (12, 12)).save(root / "red" / "print.jpg")
    capsys.readouterr()
    assert cli.main(["check", str(paths.params)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "red/print.jpg (CMYK image" in err[0], err
