"""Outputs are written atomically: an interrupted write leaves nothing that looks complete."""

import pytest

from backdoor.io import atomic_path, read_json, write_json


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert not target.exists() and list((tmp_path / "sub").iterdir()) == []


def test_atomic_path_replaces_on_success(tmp_path):
    target = tmp_path / "out.json"
    write_json({"a": 1}, target)
    write_json({"a": 2}, target)
    assert read_json(target) == {"a": 2} and [p.name for p in tmp_path.iterdir()] == ["out.json"]
