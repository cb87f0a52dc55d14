import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from backdoor.data.tensors import TensorSet
from backdoor.models import build_model

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


@pytest.fixture(autouse=True)
def one_thread():
    """Tests use tiny models: one thread is fastest, and avoids stalls on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- tiny models and data shared by the defense tests (import them: ``from conftest import …``) -----

def tiny_cnn(seed: int = 0, arch: str = "cnn") -> nn.Module:
    """A width-4 model of ``arch`` for 1-channel inputs, 10 classes, with non-trivial BN γ, β (so
    eval-mode features are not degenerate); seeded by ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    model = build_model(arch, 1, 10, [0.5], [0.5], width=4)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


def tiny_data(n: int = 48, seed: int = 0, size: int = 12) -> TensorSet:
    """``n`` random uint8 1-channel images of ``size``² pixels with random labels in 0..9."""
    g = torch.Generator().manual_seed(seed)
    return TensorSet(torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g),
                     torch.randint(0, 10, (n,), generator=g))

