"""`dvc status`, one line per stage template: how many of its entries changed, and why; params.yaml
is validated first.

    python workflow/scripts/dvc_status.py          (make status)

e.g. ``purify: 14 of 77 entries changed: deps modified src/backdoor/defenses/fip.py``. Exit 1 when
anything changed, like `dvc status -q`.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _paths(entries: dict, limit: int = 3) -> str:
    paths = sorted(entries)
    return ", ".join(paths[:limit]) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def entries(dvc_yaml: Path) -> dict[str, int]:
    """Entries per stage template of dvc.yaml (1 for a plain stage), in file order."""
    import yaml

    stages = yaml.load(dvc_yaml.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))["stages"]
    return {name: len(stage["foreach"]) if "foreach" in stage else 1 for name, stage in stages.items()}


def summary(status: dict, totals: dict[str, int]) -> list[str]:
    """Lines of ``group: n of m entries changed: reasons`` for a ``Repo.status()`` result."""
    changed: dict[str, int] = defaultdict(int)
    reasons: dict[str, dict[str, dict]] = defaultdict(lambda: defaultdict(dict))
    for name, changes in status.items():
        group = name.split("@")[0]
        changed[group] += 1
        for change in changes:
            if isinstance(change, str):  # "changed command", "always changed"
                reasons[group][change.removeprefix("changed ")] = {}
                continue
            for kind, entries in change.items():
                kind = kind.removeprefix("changed ")
                if isinstance(entries, dict):
                    for path, how in entries.items():
                        if isinstance(how, dict):  # params: {file: {key: how}}
                            for key, h in how.items():
                                reasons[group][f"params {h}"][key] = True
                        else:
                            reasons[group][f"{kind} {how}"][path] = True
                else:
                    reasons[group][kind] = {}
    lines = []
    for group in sorted(changed, key=lambda g: list(totals).index(g) if g in totals else len(totals)):
        why = "; ".join(f"{kind} {_paths(paths)}".strip() for kind, paths in reasons[group].items())
        lines.append(f"{group}: {changed[group]} of {totals.get(group, changed[group])} "
                     f"{'entries' if totals.get(group, 1) > 1 else 'entry'} changed: {why}")
    return lines


def read_params_once() -> None:
    """DVC parses params.yaml again for each stage that has params (≈ 1 s of a default-study status);
    within this one read-only call the file does not change, so parse it once per (path, mtime, size)."""
    import os

    import dvc.dependency.param as param

    if not hasattr(param, "load_path"):
        return
    original, parsed = param.load_path, {}

    def load_path(path, fs, **kwargs):
        st = os.stat(path)
        key = (str(path), st.st_mtime_ns, st.st_size, tuple(sorted(kwargs.items())))
        if key not in parsed:
            parsed[key] = original(path, fs, **kwargs)
        return parsed[key]

    param.load_path = load_path


def main() -> None:
    import os

    from dvc.repo import Repo

    sys.path.insert(0, str(ROOT / "workflow/scripts"))
    from guard import check_params

    check_params(ROOT)  # an invalid params.yaml is an error here too, not a changed stage
    read_params_once()
    os.chdir(ROOT)
    with Repo(str(ROOT)) as repo:
        status = repo.status()
    lines = summary(status, entries(ROOT / "dvc.yaml"))
    print("\n".join(lines) if lines else "Data and pipelines are up to date.")
    sys.exit(1 if lines else 0)


if __name__ == "__main__":
    main()
