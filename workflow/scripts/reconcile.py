"""Make Snakemake see what DVC sees before `make study` runs it (run_all.sh), so the two runners
agree on what is stale:

- an output DVC reports deleted or modified in a stage whose command, deps and params are unchanged
  (a file removed by hand, a truncated json) is printed as a ``--forcerun`` target: Snakemake
  remakes it and everything after it (on its own it ignores a missing intermediate file when the
  files after it exist, snakemake#1978);
- when DVC vouches for every output (``dvc status`` clean) but Snakemake would rerun jobs, the
  files' times moved (``dvc commit -f`` or ``dvc checkout`` re-copied them, same bytes): every
  output is re-stamped in DAG order, as after_dvc.sh does, and nothing reruns.

    python workflow/scripts/reconcile.py        (prints the --forcerun targets, one per line)

Does nothing without a dvc.lock (no complete run recorded yet). Says what it found in one line on
stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def damaged_outputs(status: dict) -> list[str]:
    """Outputs deleted or modified in stages that changed in nothing else (a ``Repo.status()`` result)."""
    found = []
    for changes in status.values():
        kinds = {k for c in changes for k in (c if isinstance(c, dict) else {c: None})}
        if kinds != {"changed outs"}:
            continue  # a changed command, dep or param: Snakemake's own triggers rerun the stage
        for change in changes:
            found += [path for path, how in change["changed outs"].items() if how in ("deleted", "modified")]
    return sorted(set(found))


def snakemake_pending(root: Path) -> bool:
    out = subprocess.run(["snakemake", "-n", "--cores", "1", "all"], cwd=root, capture_output=True, text=True)
    return out.returncode != 0 or "Nothing to be done" not in out.stdout + out.stderr


def main() -> None:
    if not (ROOT / "dvc.lock").exists() or not (ROOT / ".dvc").is_dir():
        return
    import dvc_status
    from dvc.repo import Repo

    dvc_status.read_params_once()
    with Repo(str(ROOT)) as repo:
        status = repo.status()
    damaged = damaged_outputs(status)
    if damaged:
        shown = ", ".join(damaged[:3]) + (f" and {len(damaged) - 3} more" if len(damaged) > 3 else "")
        print(f"reconcile: {len(damaged)} output(s) deleted or changed since dvc.lock ({shown}); remaking them "
              "and what depends on them", file=sys.stderr)
        print("\n".join(damaged))
        return
    if not status and snakemake_pending(ROOT):
        touched = subprocess.run(["snakemake", "--touch", "--forceall", "--cores", "1", "--quiet", "all"], cwd=ROOT,
                                 capture_output=True, text=True, env={**os.environ})
        if touched.returncode != 0:
            sys.exit(f"reconcile: re-stamping the outputs failed:\n{touched.stderr[-2000:]}")
        print("reconcile: every output matches dvc.lock but their times moved (dvc commit / checkout re-copied "
              "them); re-stamped them in DAG order, nothing reruns", file=sys.stderr)


if __name__ == "__main__":
    main()
