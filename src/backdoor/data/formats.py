"""Readers for the original on-disk formats: IDX (MNIST family), CIFAR python pickles, GTSRB zips.

Each reader returns ``(train_x, train_y, test_x, test_y)`` with uint8 images shaped (N, C, H, W)
and int64 labels.
"""

from __future__ import annotations

import csv
import gzip
import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

Split = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): magic 0x0000, dtype byte, ndim byte, big-endian dims."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = data[4 + 4 * ndim:]
    if len(body) != expected:
        raise ValueError(f"{path} is truncated: {len(body)} bytes of data, header says {expected}")
    return np.frombuffer(body, dtype=dtype).reshape(tuple(dims)).copy()  # writable, not a view of bytes


def _images(array: np.ndarray) -> torch.Tensor:
    """(N, H, W) or (N, H, W, C) uint8 → (N, C, H, W)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.uint8))
    return tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2).contiguous()


def _labels(array) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array, dtype=np.int64))


def read_idx_dataset(raw_dir: Path) -> Split:
    part = {name: read_idx(raw_dir / f"{name}.gz") for name in (
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    return (_images(part["train-images-idx3-ubyte"]), _labels(part["train-labels-idx1-ubyte"]),
            _images(part["t10k-images-idx3-ubyte"]), _labels(part["t10k-labels-idx1-ubyte"]))


def read_cifar(raw_dir: Path) -> Split:
    """cifar-10-python.tar.gz: pickled dicts with b'data' (N, 3072) rows in CHW order and b'labels'."""
    batches: dict[str, dict] = {}
    with tarfile.open(raw_dir / "cifar-10-python.tar.gz", "r:gz") as tar:
        for member in tar.getmembers():
            base = Path(member.name).name
            if base.startswith("data_batch_") or base == "test_batch":
                batches[base] = pickle.load(tar.extractfile(member), encoding="bytes")
    train_names = sorted(n for n in batches if n.startswith("data_batch_"))
    if not train_names or "test_batch" not in batches:
        raise ValueError(f"{raw_dir}/cifar-10-python.tar.gz lacks data_batch_* or test_batch")

    def stack(names):
        data = np.concatenate([batches[n][b"data"] for n in names]).reshape(-1, 3, 32, 32)
        labels = np.concatenate([batches[n][b"labels"] for n in names])
        return torch.from_numpy(data.astype(np.uint8)), _labels(labels)

    return (*stack(train_names), *stack(["test_batch"]))


def _ppm_to_tensor(raw: bytes, size: int) -> np.ndarray:
    image = Image.open(io.BytesIO(raw)).convert("RGB").resize((size, size), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def read_gtsrb(raw_dir: Path, size: int = 32) -> Split:
    """GTSRB: training zip with per-class GT-XXXXX.csv files, test images zip + a separate GT zip.

    Images (variable size, PPM) are resized to ``size``×``size`` with bilinear filtering, as
    BackdoorBench does for its 32×32 GTSRB.
    """
    def rows(text: str):
        return list(csv.DictReader(io.StringIO(text), delimiter=";"))

    train_x, train_y = [], []
    with zipfile.ZipFile(raw_dir / "GTSRB-Training_fixed.zip") as zf:
        names = zf.namelist()
        for csv_name in sorted(n for n in names if Path(n).name.startswith("GT-") and n.endswith(".csv")):
            folder = str(Path(csv_name).parent)
            for row in rows(zf.read(csv_name).decode()):
                train_x.append(_ppm_to_tensor(zf.read(f"{folder}/{row['Filename']}"), size))
                train_y.append(int(row["ClassId"]))
    with zipfile.ZipFile(raw_dir / "GTSRB_Final_Test_GT.zip") as zf:
        gt_name = next(n for n in zf.namelist() if n.endswith(".csv"))
        test_labels = {row["Filename"]: int(row["ClassId"]) for row in rows(zf.read(gt_name).decode())}
    test_x, test_y = [], []
    with zipfile.ZipFile(raw_dir / "GTSRB_Final_Test_Images.zip") as zf:
        for name in sorted(n for n in zf.namelist() if n.endswith(".ppm")):
            test_x.append(_ppm_to_tensor(zf.read(name), size))
            test_y.append(test_labels[Path(name).name])
    if not train_x or not test_x:
        raise ValueError(f"no GTSRB images found in {raw_dir}")
    return _images(np.stack(train_x)), _labels(train_y), _images(np.stack(test_x)), _labels(test_y)


READERS = {"idx": read_idx_dataset, "cifar": read_cifar, "gtsrb": read_gtsrb}
