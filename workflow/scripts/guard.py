"""Checks every entry point runs before any job: params.yaml is valid and dvc.yaml is the one the
Snakemake DAG generates (so DVC and Snakemake run the same jobs). Nothing is changed when one fails.

    python workflow/scripts/guard.py [--marker results/validated.txt] [--free]

DVC's `validate` stage runs it (every other stage depends on its marker, so `dvc repro` and
`dvc exp run` stop here before deleting any output); run_all.sh, after_dvc.sh and `make` targets
run it first. ``--free`` also fails when another runner holds the workspace.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "workflow/scripts"))

MARKER_TEXT = "params.yaml is valid and dvc.yaml matches the Snakemake DAG\n"


def check_params(root: Path) -> None:
    from backdoor import schema

    try:
        schema.load(root / "params.yaml")
    except schema.ParamsError as err:
        sys.exit(f"{err}\nNothing was run or deleted; fix params.yaml and rerun.")


def check_dvc_yaml(root: Path) -> None:
    import snake2dvc

    expected = snake2dvc.generate(root / "Snakefile")
    target = root / "dvc.yaml"
    if not target.exists() or target.read_text() != expected:
        sys.exit("dvc.yaml is out of date with params.yaml and the Snakefile (the study matrix, a rule or the "
                 "code a job imports changed), so DVC would run other jobs than Snakemake. Nothing was run or "
                 "deleted: run `make dvc.yaml`, commit dvc.yaml, then rerun.")


def check_free(root: Path) -> None:
    """Fail when a DVC command (or a Snakemake run holding DVC's lock) is working in ``root``."""
    lock = root / ".dvc" / "tmp" / "lock"
    if not lock.exists():
        return
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            sys.exit("another runner is working in this workspace (it holds .dvc/tmp/lock: `dvc repro`, "
                     "`dvc exp run` or Snakemake). Nothing was changed; rerun when it has finished.")
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def write_marker(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(MARKER_TEXT)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--marker", help="write this file when every check passes")
    ap.add_argument("--free", action="store_true", help="also fail when another runner holds the workspace")
    args = ap.parse_args()
    if args.free:
        check_free(ROOT)
    check_params(ROOT)
    check_dvc_yaml(ROOT)
    if args.marker:
        write_marker(ROOT / args.marker)


if __name__ == "__main__":
    main()
