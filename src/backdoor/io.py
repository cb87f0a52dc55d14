"""Atomic file output and tensor/JSON I/O.

Every artifact is written to a temporary file beside its destination and renamed into place, so an
interrupted job never leaves a file that looks complete. Outputs are byte-identical for identical
inputs: wall-clock measurements go to a ``.time.json`` beside a record (``write_record``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp's 0600 would make outputs private
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def save_tensors(obj: Any, path: str | os.PathLike) -> None:
    """torch.save through an open file: given a path, torch names the archive inside after the
    (random) temporary file, so equal contents would not give equal bytes."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


def load_tensors(path: str | os.PathLike) -> Any:
    if not Path(path).exists():
        raise FileNotFoundError(f"{path} does not exist: run the step that produces it first "
                                "(snakemake or dvc repro builds it).")
    return torch.load(path, map_location="cpu", weights_only=False)


def write_json(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def is_timing(key: str) -> bool:
    """Wall-clock fields of a record: ``*seconds*``, ``*_s`` (runtime_s, images_per_s), ``threads``."""
    return key == "threads" or "seconds" in key or key.endswith("_s")


def split_timings(record: dict) -> tuple[dict, dict]:
    """(record without wall-clock fields, those fields), at any depth of nested dicts."""
    kept, timings = {}, {}
    for key, value in record.items():
        if is_timing(key):
            timings[key] = value
        elif isinstance(value, dict):
            kept[key], inner = split_timings(value)
            if inner:
                timings[key] = inner
        else:
            kept[key] = value
    return kept, timings


def timing_path(path: str | os.PathLike) -> Path:
    """``x.json`` -> ``x.time.json``: where a record's wall-clock fields live."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".json") + ".time.json")


def write_record(record: dict, path: str | os.PathLike) -> None:
    """A job's metrics: results in ``path`` (identical bytes for identical results), wall-clock
    fields in ``timing_path(path)``."""
    kept, timings = split_timings(record)
    write_json(kept, path)
    write_json(timings, timing_path(path))


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, value in b.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_record(path: str | os.PathLike) -> dict:
    """A record with its wall-clock fields merged back (when its ``.time.json`` exists)."""
    record = read_json(path)
    timing = timing_path(path)
    return _merge(record, read_json(timing)) if timing.exists() else record
