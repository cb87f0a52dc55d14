import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def project_files() -> list[str]:
    """The project as a clone would have it: tracked files plus untracked, not ignored ones."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if (ROOT / line).is_file()]


@pytest.fixture
def project_copy(tmp_path):
    """A copy of the project in tmp_path/project (no data, results or Snakemake state)."""
    dest = tmp_path / "project"
    for rel in project_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    return dest
