"""Atomic writes: an output is either complete or absent, never half-written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from dlpipe.io import atomic_path, read_json, sha256_file, write_json, write_text


class Boom(Exception):
    pass


def test_atomic_path_writes_on_success_and_cleans_up(tmp_path):
    target = tmp_path / "sub" / "out.txt"  # the parent folder is created
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent
        assert tmp != target
        assert not target.exists()  # nothing visible until the block succeeds
        tmp.write_text("complete")
    assert target.read_text() == "complete"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]  # no temp file left


def test_atomic_path_leaves_no_file_when_the_block_raises(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise Boom
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_the_old_file_when_the_block_raises(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old contents")
    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_text("new but half-written")
        raise Boom
    assert target.read_text() == "old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_path_replaces_the_old_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_write_json_round_trip_with_numpy_and_paths(tmp_path):
    target = tmp_path / "meta.json"
    write_json(target, {"b": np.arange(3), "a": Path("x/y"), "n": np.float32(1.5)})
    text = target.read_text()
    assert text.endswith("\n")
    assert list(json.loads(text)) == ["b", "a", "n"]  # insertion order kept
    assert read_json(target) == {"b": [0, 1, 2], "a": "x/y", "n": 1.5}


def test_write_json_refuses_unknown_objects_and_writes_nothing(tmp_path):
    target = tmp_path / "meta.json"
    target.write_text('{"old": true}\n')
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        write_json(target, {"x": object()})
    assert read_json(target) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]


def test_sha256_file_matches_hashlib(tmp_path):
    target = tmp_path / "blob.bin"
    payload = bytes(range(256)) * 5000  # bigger than one chunk below
    target.write_bytes(payload)
    expected = hashlib.sha256(payload).hexdigest()
    assert sha256_file(target) == expected
    assert sha256_file(target, chunk=1000) == expected
