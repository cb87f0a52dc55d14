"""backdoor.stamps: recorded times come back only when the bytes prove nothing changed."""

import os

import yaml

from backdoor import stamps


def study(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data/a.pt").write_bytes(b"a" * 100)
    (tmp_path / "out").mkdir()
    (tmp_path / "out/b.json").write_text("{}")
    lock = {"schema": "2.0", "stages": {"s": {"outs": [{"path": "data/a.pt"}, {"path": "out"}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    for i, rel in enumerate(("data/a.pt", "out/b.json")):
        os.utime(tmp_path / rel, ns=(10**18, 10**18 + i))
    assert stamps.record(tmp_path) == 2  # a file output and a folder output's file
    return tmp_path


def test_recopied_files_get_their_recorded_times_back(tmp_path):
    root = study(tmp_path)
    (root / "data/a.pt").write_bytes(b"a" * 100)  # the same bytes, a new time
    assert stamps.restore(root) == ["data/a.pt"]
    assert (root / "data/a.pt").stat().st_mtime_ns == 10**18
    assert stamps.restore(root) == []  # nothing moved any more


def test_one_changed_file_leaves_every_time_as_it_is(tmp_path):
    root = study(tmp_path)
    (root / "data/a.pt").write_bytes(b"a" * 100)
    (root / "out/b.json").write_text("[]")  # same size, other bytes: a real change
    moved = (root / "data/a.pt").stat().st_mtime_ns
    assert stamps.restore(root) == []
    assert (root / "data/a.pt").stat().st_mtime_ns == moved


def test_deleted_files_and_a_missing_ledger_are_left_to_the_runners(tmp_path):
    assert stamps.restore(tmp_path) == []
    root = study(tmp_path)
    (root / "out/b.json").unlink()
    assert stamps.restore(root) == []
