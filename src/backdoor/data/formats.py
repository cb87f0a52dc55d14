"""Read a dataset's verified original files through ``torchvision.datasets``.

torchvision's dataset classes read the archives' layout; what they lack is kept here: they are
handed only files this study has verified (``download.verify_dataset``, which also accepts the
Debian package's recompressed Fashion-MNIST), they unpack into a temporary folder (the raw folder
is a tracked output and stays untouched), and every reader returns ``(train_x, train_y, test_x,
test_y)``: uint8 images shaped (N, C, H, W) and int64 labels. ``download=False`` everywhere: reading
never touches the network. Tiny-ImageNet has no torchvision class; its official archive is read with
``ImageFolder`` (training) and ``val/val_annotations.txt`` (its validation set is the test set).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

Split = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _images(array) -> torch.Tensor:
    """(N, H, W) or (N, H, W, C) uint8 → (N, C, H, W)."""
    tensor = torch.as_tensor(np.ascontiguousarray(array, dtype=np.uint8))
    return tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2).contiguous()


def _labels(array) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array, dtype=np.int64))


def _unpack(archive: Path, into: Path) -> None:
    from torchvision.datasets.utils import extract_archive

    try:
        extract_archive(str(archive), str(into))
    except Exception as err:  # zipfile.BadZipFile, tarfile.ReadError, EOFError, ...
        raise ValueError(f"{archive} cannot be unpacked ({err}); delete it and run the study again") from err


def _resized(size: int):
    """torchvision transform: any PIL image → (size, size, 3) uint8, bilinear (as BackdoorBench)."""
    return lambda image: np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8)


def _stack(dataset, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [dataset[i] for i in range(len(dataset))]
    if not pairs:
        raise ValueError(f"no images found in {what}")
    return _images(np.stack([x for x, _ in pairs])), _labels([y for _, y in pairs])


def read_idx_dataset(raw_dir: Path, torchvision_class: str = "FashionMNIST") -> Split:
    """MNIST / Fashion-MNIST: the four gzipped IDX files, decompressed into torchvision's raw folder."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, torchvision_class)
    with tempfile.TemporaryDirectory(prefix="idx-") as tmp:
        raw_folder = Path(tmp) / cls.__name__ / "raw"
        raw_folder.mkdir(parents=True)
        for name, _ in cls.resources:
            _unpack(Path(raw_dir) / name, raw_folder)
        parts = []
        for train in (True, False):
            try:
                ds = cls(tmp, train=train, download=False)
            except Exception as err:  # torchvision's IDX parser: KeyError, RuntimeError, TypeError, ...
                raise ValueError(f"{raw_dir}: the {'training' if train else 'test'} IDX files are not readable "
                                 f"({type(err).__name__}: {err}); delete the folder and run the study again") from err
            parts += [_images(ds.data), _labels(ds.targets)]
    return tuple(parts)


def read_cifar(raw_dir: Path, torchvision_class: str = "CIFAR10") -> Split:
    """cifar-10-python.tar.gz: unpacked, then read by torchvision, which checks each batch's MD5."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, torchvision_class)
    with tempfile.TemporaryDirectory(prefix="cifar-") as tmp:
        _unpack(Path(raw_dir) / cls.filename, Path(tmp))
        parts = []
        for train in (True, False):
            try:
                ds = cls(tmp, train=train, download=False)
            except RuntimeError as err:  # "Dataset not found or corrupted": a batch is missing or its MD5 differs
                raise ValueError(f"{raw_dir}/{cls.filename}: {err} (torchvision checks every batch file's MD5); "
                                 "delete it and run the study again") from err
            parts += [_images(ds.data), _labels(ds.targets)]
    return tuple(parts)


def read_gtsrb(raw_dir: Path, torchvision_class: str = "GTSRB", size: int = 32) -> Split:
    """GTSRB: the three zips in torchvision's layout; images (variable size, PPM) resized to ``size``²."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, torchvision_class)
    with tempfile.TemporaryDirectory(prefix="gtsrb-") as tmp:
        base = Path(tmp) / "gtsrb"
        for name in ("GTSRB-Training_fixed.zip", "GTSRB_Final_Test_Images.zip", "GTSRB_Final_Test_GT.zip"):
            _unpack(Path(raw_dir) / name, base)
        train = cls(tmp, split="train", transform=_resized(size), download=False)
        test = cls(tmp, split="test", transform=_resized(size), download=False)
        return (*_stack(train, f"{raw_dir}/GTSRB-Training_fixed.zip"),
                *_stack(test, f"{raw_dir}/GTSRB_Final_Test_Images.zip"))


def read_tiny_imagenet(raw_dir: Path, torchvision_class: str | None = None, size: int = 64) -> Split:
    """tiny-imagenet-200.zip: train/<wnid>/images/*.JPEG through ImageFolder (labels: wnids sorted);
    val/images + val/val_annotations.txt (file name, wnid, box) as the test set."""
    from torchvision.datasets import ImageFolder

    with tempfile.TemporaryDirectory(prefix="tiny-") as tmp:
        _unpack(Path(raw_dir) / "tiny-imagenet-200.zip", Path(tmp))
        root = Path(tmp) / "tiny-imagenet-200"
        if not (root / "wnids.txt").is_file():
            raise ValueError(f"{raw_dir}/tiny-imagenet-200.zip lacks tiny-imagenet-200/wnids.txt: not the official archive")
        wnids = sorted((root / "wnids.txt").read_text().split())
        train = ImageFolder(str(root / "train"), transform=_resized(size))
        if train.classes != wnids:
            raise ValueError(f"{raw_dir}/tiny-imagenet-200.zip: train/ has {len(train.classes)} class folders, "
                             f"wnids.txt lists {len(wnids)}")
        train_x, train_y = _stack(train, f"{raw_dir}/tiny-imagenet-200.zip train/")
        test_x, test_y = [], []
        for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
            if line.strip():
                name, wnid = line.split("\t")[:2]
                with Image.open(root / "val" / "images" / name) as image:
                    test_x.append(_resized(size)(image))
                test_y.append(train.class_to_idx[wnid])
        if not test_x:
            raise ValueError(f"{raw_dir}/tiny-imagenet-200.zip: val/val_annotations.txt lists no images")
        return train_x, train_y, _images(np.stack(test_x)), _labels(test_y)


READERS = {"idx": read_idx_dataset, "cifar": read_cifar, "gtsrb": read_gtsrb, "tiny_imagenet": read_tiny_imagenet}
