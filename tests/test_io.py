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


def test_outputs_get_the_usual_mode_not_mkstemps_private_one(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        write_json({"a": 1}, tmp_path / "out.json")
    finally:
        os.umask(umask)
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == 0o644


def test_job_log_gets_stdout_stderr_c_level_output_and_readable_progress(tmp_path, monkeypatch):
    import os
    import sys
    import time

    from tqdm import tqdm

    from backdoor.joblog import logged

    log = tmp_path / "logs" / "job.log"
    clock = iter(range(0, 1000, 10))  # each progress refresh comes 10 s after the previous one
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))
    with pytest.raises(RuntimeError):
        with logged(log, progress_every=30):
            print("to stdout")
            print("to stderr", file=sys.stderr)
            os.write(2, b"from the C level\n")
            for _ in tqdm(range(12), desc="steps", mininterval=0, miniters=1):
                pass
            raise RuntimeError("the job failed")
    text = log.read_text()
    for line in ["to stdout", "to stderr", "from the C level", "RuntimeError: the job failed"]:
        assert line in text
    progress = [line for line in text.splitlines() if line.startswith("steps:")]
    assert 2 <= len(progress) <= 6, progress  # one line per 30 s of the 13 refreshes, not all of them
    assert "\r" not in text
