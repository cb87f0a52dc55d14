"""Re-hash outputs against dvc.lock: a file whose bytes do not match the hash DVC recorded (a corrupt
object pulled from a remote or linked from the cache) is found here, where `dvc status` trusts its
own records and would not notice.

    python workflow/scripts/verify_outputs.py [--cache] [--allow-missing]

Checks every output in dvc.lock (for a directory, each file of its manifest); ``--cache`` also checks
the cache objects they point to (before `dvc push`). Exits 1 listing each mismatch and the fix.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from backdoor.stamps import md5  # noqa: E402  (torch-free; the hash stamps.py records)


def cache_dir(root: Path) -> Path:
    """The project's DVC cache (`cache.dir` in .dvc/config, else .dvc/cache)."""
    try:
        from dvc.repo import Repo

        with Repo(str(root)) as repo:
            return Path(repo.cache.local.path).parent.parent
    except Exception:  # noqa: BLE001 - no DVC Python API: the default location
        return root / ".dvc" / "cache"


def cache_object(cache: Path, digest: str) -> Path:
    return cache / "files" / "md5" / digest[:2] / digest[2:]


def expected_files(root: Path, cache: Path) -> tuple[dict[str, str], list[str]]:
    """``path -> md5`` of every output file in dvc.lock, and the problems found reading it."""
    lock = yaml.safe_load((root / "dvc.lock").read_text()) or {}
    files, problems = {}, []
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            digest = out.get("md5")
            if digest is None:
                continue
            if digest.endswith(".dir"):
                manifest = cache_object(cache, digest)
                if not manifest.exists():
                    problems.append(f"{out['path']}: its directory manifest {digest} is not in the cache "
                                    "(run `dvc pull` or `dvc fetch` first)")
                    continue
                for entry in json.loads(manifest.read_text()):
                    files[f"{out['path']}/{entry['relpath']}"] = entry["md5"]
            else:
                files[out["path"]] = digest
    return files, problems


def verify(root: Path, check_cache: bool = False, allow_missing: bool = False) -> list[str]:
    cache = cache_dir(root)
    files, problems = expected_files(root, cache)
    for path, digest in sorted(files.items()):
        target = root / path
        if not target.exists():
            if not allow_missing:
                problems.append(f"{path}: missing (run `dvc pull` or `dvc checkout`)")
        elif md5(target) != digest:
            obj = cache_object(cache, digest)
            cached = obj.exists() and md5(obj) != digest
            problems.append(f"{path}: its content does not match dvc.lock (md5 {digest}): corrupt. Delete it"
                            + (f" and the corrupt cache object {obj.relative_to(root) if obj.is_relative_to(root) else obj}"
                               if cached else "")
                            + ", then `dvc pull` it again (if the remote's copy is corrupt too, ask the publisher to "
                            "`make verify` and `make publish`) or `dvc repro` to recompute it")
            continue
        if check_cache:
            obj = cache_object(cache, digest)
            if obj.exists() and md5(obj) != digest:
                problems.append(f"{path}: the DVC cache object {obj} is corrupt (the workspace copy is intact): "
                                "delete that object, then `dvc commit -f` to store it again")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", action="store_true", help="also verify the cache objects behind the outputs")
    ap.add_argument("--allow-missing", action="store_true", help="skip outputs that are not in the workspace")
    args = ap.parse_args()
    if not (ROOT / "dvc.lock").exists():
        sys.exit("no dvc.lock: nothing is recorded yet (make study, or git pull a published dvc.lock)")
    problems = verify(ROOT, args.cache, args.allow_missing)
    if problems:
        sys.exit("verify_outputs: " + str(len(problems)) + " problem(s):\n  - " + "\n  - ".join(problems))
    print("verify_outputs: every output matches dvc.lock")


if __name__ == "__main__":
    main()
