"""The recorded state of a finished study's outputs, so that a plain Snakemake agrees with DVC after
``dvc commit -f`` or ``dvc checkout`` re-copied files (same bytes, new modification times).

``record`` (called by ``make study`` after ``dvc commit`` and by ``after_dvc.sh``) writes, for every
file of every output in ``dvc.lock``, its size, modification time and md5 to ``.snakemake/stamps.json``
(only files whose size or time changed since the last record are hashed again). ``restore`` (called
when the Snakefile is read) puts the recorded times back on files whose time moved, but only when
every such file still holds its recorded bytes: a file whose bytes changed means something really
changed, and then Snakemake's own rules decide. Torch-free; no DVC import.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

LEDGER = Path(".snakemake") / "stamps.json"


def md5(path: Path) -> str:
    """MD5 of a file's bytes, read in 1 MiB blocks (DVC's hash of a file output)."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def locked_outputs(root: Path) -> list[str]:
    """Every output path of every stage in ``dvc.lock`` (files and folders), relative to ``root``."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    lock = yaml.load((root / "dvc.lock").read_text(), Loader=loader) or {}
    return sorted({out["path"] for stage in (lock.get("stages") or {}).values() for out in stage.get("outs", [])})


def _files(root: Path, outputs: list[str]) -> list[str]:
    found = []
    for out in outputs:
        path = root / out
        if path.is_dir():
            found += [os.path.relpath(os.path.join(d, n), root) for d, _, names in os.walk(path) for n in names]
        elif path.is_file():
            found.append(out)
    return sorted(found)


def _read(root: Path) -> dict[str, list]:
    try:
        return json.loads((root / LEDGER).read_text())
    except (OSError, ValueError):
        return {}


def record(root: Path) -> int:
    """Write the ledger for the outputs in ``dvc.lock``; returns how many files it holds."""
    old = _read(root)
    ledger = {}
    for rel in _files(root, locked_outputs(root)):
        st = (root / rel).stat()
        prev = old.get(rel)
        same = prev and prev[0] == st.st_size and prev[1] == st.st_mtime_ns
        ledger[rel] = [st.st_size, st.st_mtime_ns, prev[2] if same else md5(root / rel)]
    (root / LEDGER).parent.mkdir(exist_ok=True)
    tmp = root / (str(LEDGER) + ".tmp")
    tmp.write_text(json.dumps(ledger, separators=(",", ":")))
    os.replace(tmp, root / LEDGER)
    return len(ledger)


def restore(root: Path) -> list[str]:
    """Put the recorded times back on re-copied files (see the module's docstring); returns them."""
    moved = []
    for rel, (size, mtime_ns, digest) in _read(root).items():
        try:
            st = (root / rel).stat()
        except OSError:
            continue  # deleted: Snakemake and DVC both see that
        if st.st_mtime_ns == mtime_ns:
            continue
        if st.st_size != size or md5(root / rel) != digest:
            return []  # something really changed: leave every time as it is
        moved.append((rel, st.st_atime_ns, mtime_ns))
    for rel, atime_ns, mtime_ns in moved:
        os.utime(root / rel, ns=(atime_ns, mtime_ns))
    return [rel for rel, _, _ in moved]


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["record"]:
        sys.exit("usage: python -m backdoor.stamps record   (in the study's folder, after dvc commit)")
    n = record(Path.cwd())
    print(f"stamps: recorded {n} output files in {LEDGER}", file=sys.stderr)
