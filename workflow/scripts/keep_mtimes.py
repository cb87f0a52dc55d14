"""Run a command that must not change outputs' modification times, e.g. `dvc commit`.

    python workflow/scripts/keep_mtimes.py dvc commit -f -q

`dvc commit` may replace a workspace file by its cache copy (same bytes, a new mtime); for files
over 1 MB Snakemake compares mtimes, so a newer input would make it rerun finished jobs. Files
under data/ and results/ get their modification times back when their size is unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOPS = ("data", "results")


def snapshot(root: Path) -> dict[str, os.stat_result]:
    found = {}
    for top in TOPS:
        for dirpath, _, names in os.walk(root / top):
            for name in names:
                path = os.path.join(dirpath, name)
                found[path] = os.stat(path, follow_symlinks=False)
    return found


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    before = snapshot(ROOT)
    code = subprocess.call(sys.argv[1:], cwd=ROOT)
    for path, st in before.items():
        try:
            now = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if now.st_size == st.st_size and now.st_mtime_ns != st.st_mtime_ns:
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    sys.exit(code)


if __name__ == "__main__":
    main()
