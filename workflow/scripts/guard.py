"""Checks every entry point runs before any job: params.yaml is valid and dvc.yaml is the one the
Snakemake DAG generates (so DVC and Snakemake run the same jobs). Nothing is changed when one fails.

    python workflow/scripts/guard.py [--marker results/validated.txt] [--free]

DVC's `validate` stage runs it (every other stage depends on its marker, so `dvc repro` and
`dvc exp run` stop here before deleting any output); run_all.sh, after_dvc.sh and `make` targets
run it first. ``--free`` also fails when another runner holds the workspace, and clears the lock a
Snakemake run killed with -9 left behind when none of its processes is alive (else names them).
First of all it checks that it runs in the study's environment: `dvc repro` from a shell without
`.venv` activated would run every stage with the system's python3 and snakemake.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "workflow/scripts"))

MARKER_TEXT = "params.yaml is valid and dvc.yaml matches the Snakemake DAG\n"


def check_environment() -> None:
    """Stop with one line when this python3 (the stage commands' `python3`) or the `snakemake` on the
    PATH is not the study's environment, before anything else imports what it lacks."""
    missing = [m for m in ("snakemake", "yaml", "torch") if importlib.util.find_spec(m) is None]
    if missing or shutil.which("snakemake") is None:
        lacks = f"cannot import {', '.join(missing)}" if missing else "finds no `snakemake` on the PATH"
        sys.exit(f"this shell is not in the study's environment: {sys.executable} {lacks}. Run "
                 "`source .venv/bin/activate` (made by `make setup`) and rerun, or run `make study`, which uses "
                 ".venv by itself. Nothing was run or deleted.")


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


def _is_snakemake(argv: list[str]) -> bool:
    """A Snakemake runner's command line (``snakemake …``, ``python …/snakemake …``, ``python -m snakemake``)."""
    head = argv[:3]
    return any(Path(a).name == "snakemake" for a in head) or "-m snakemake" in " ".join(head)


def workspace_processes(root: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(Snakemake runners, jobs of a Snakemake run) whose working directory is ``root``: pid and
    command line, read from /proc (Linux; empty elsewhere)."""
    runners, jobs = [], []
    me = os.getpid()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if int(entry.name) == me or Path(os.readlink(entry / "cwd")) != root:
                continue
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        if _is_snakemake(argv):
            runners.append((int(entry.name), " ".join(argv)[:120]))
        elif any("/.snakemake/scripts/" in a for a in argv):
            jobs.append((int(entry.name), " ".join(argv)[:120]))
    return runners, jobs


def clear_stale_lock(root: Path) -> None:
    """Snakemake's lock (.snakemake/locks) outlives a runner killed with -9 (power loss, OOM killer, a
    closed terminal), and the next run would stop with a LockException. When no runner and none of
    its jobs is alive here, the lock is stale: remove it and say so. Otherwise refuse, naming them."""
    locks = root / ".snakemake" / "locks"
    if not locks.is_dir() or not any(locks.iterdir()):
        return
    runners, jobs = workspace_processes(root)
    if runners:
        pid, cmd = runners[0]
        sys.exit(f"another Snakemake run is working in this workspace (pid {pid}: {cmd}). Nothing was changed; "
                 "rerun when it has finished.")
    if jobs:
        pid, cmd = jobs[0]
        sys.exit(f"a job of an earlier, killed Snakemake run is still running here (pid {pid}: {cmd}). Nothing "
                 f"was changed; wait for it to end (or `kill {pid}`), then rerun.")
    for lock in locks.iterdir():
        lock.unlink()
    print("guard: the Snakemake run that locked this workspace is gone (killed?); cleared its stale lock "
          "(.snakemake/locks) and resuming", file=sys.stderr)


def write_marker(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(MARKER_TEXT)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--marker", help="write this file when every check passes")
    ap.add_argument("--free", action="store_true", help="also fail when another runner holds the workspace "
                    "(and clear a killed Snakemake run's stale lock)")
    args = ap.parse_args()
    check_environment()
    if args.free:
        check_free(ROOT)
        clear_stale_lock(ROOT)
    check_params(ROOT)
    check_dvc_yaml(ROOT)
    if args.marker:
        write_marker(ROOT / args.marker)


if __name__ == "__main__":
    main()
