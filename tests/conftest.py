import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from backdoor.data.tensors import TensorSet
from backdoor.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """Tests marked slurm start daemons and install packages: they run only when asked for by name
    (`pytest -m slurm`), never as part of `make test`."""
    if "slurm" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="opt-in: pytest -m slurm (installs and starts a one-node SLURM cluster)")
    for item in items:
        if "slurm" in item.keywords:
            item.add_marker(skip)


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


# oneDNN (mkldnn) is off in the whole test process (module-scoped fixtures included): its CPU
# convolutions corrupt the heap for the width-4 test models on some CPUs (an AMD EPYC Zen 2: an abort
# in FMP's fine-tuning of a width-4 PreAct-ResNet; torch 2.14.1). The study's models are wider
# (src/backdoor/device.py: memory_format); the end-to-end tests' jobs run in their own processes.
torch.backends.mkldnn.enabled = False


@pytest.fixture(autouse=True)
def one_thread():
    """Tests use tiny models: one thread is fastest, and avoids stalls on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- tiny models and data shared by the defense tests (import them: ``from conftest import …``) -----

def write_cifar_archive(raw_dir: Path, members: dict[str, bytes], monkeypatch) -> Path:
    """cifar-10-python.tar.gz holding ``members`` (name → bytes under cifar-10-batches-py/, in the
    given order), and torchvision's CIFAR10 told the generated files' MD5s (it checks every batch
    against the official ones, which no generated miniature can match)."""
    import hashlib
    import io
    import tarfile

    from torchvision.datasets import CIFAR10

    raw_dir.mkdir(parents=True, exist_ok=True)
    path = raw_dir / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    md5 = {name: hashlib.md5(payload).hexdigest() for name, payload in members.items()}
    monkeypatch.setattr(CIFAR10, "train_list", [[n, md5.get(n, "")] for n, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[n, md5.get(n, "")] for n, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5.get("batches.meta", "")})
    return path


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


def sigint_default() -> None:
    """Popen ``preexec_fn`` for a child the test interrupts: Ctrl-C reaches it even when pytest itself
    runs in the background (a shell's ``cmd &`` without job control ignores SIGINT, children inherit)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
