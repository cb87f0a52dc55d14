"""Tests for the dataset layer: registry, download/verify, original-format readers, seeded splits.

Nothing here touches the network. Small files are generated in the real on-disk formats (gzipped
IDX, the CIFAR-10 python tarball, the GTSRB zips); the download logic is checked with specs whose
MD5s are those of the generated files.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import http.client
import io
import pickle
import re
import struct
import tarfile
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backdoor.data import DATASETS, DatasetSpec, RawFile, get_dataset
from backdoor.data import download
from backdoor.data.download import ChecksumError, checksum_ok, fetch_dataset, fetch_file, md5_of, verify
from backdoor.data.formats import READERS, read_cifar, read_gtsrb, read_idx_dataset, read_tiny_imagenet
from backdoor.data.prepare import SplitParams, prepare
from conftest import write_cifar_archive

_REAL_DOWNLOAD_URL = download._download_url
IDX_NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
GTSRB_ZIPS = ("GTSRB-Training_fixed.zip", "GTSRB_Final_Test_Images.zip", "GTSRB_Final_Test_GT.zip")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to download fails the test; tests that exercise the URL path patch in their own."""
    def refuse(url, dest):
        raise AssertionError(f"test tried to download {url}")
    monkeypatch.setattr(download, "_download_url", refuse)


# ---------------------------------------------------------------------------------------------------
# helpers that write the real formats

def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX: two zero bytes, dtype 0x08 (ubyte), ndim, big-endian uint32 dims, then the data."""
    assert array.dtype == np.uint8
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def gz(data: bytes, level: int = 9, mtime: int = 0) -> bytes:
    return gzip.compress(data, compresslevel=level, mtime=mtime)


def write_idx_dir(folder: Path, train_x, train_y, test_x, test_y) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in zip(IDX_NAMES, (train_x, train_y, test_x, test_y)):
        (folder / name).write_bytes(gz(idx_bytes(array)))
    return folder


def identifiable_images(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(n, size, size) uint8 with the image's index written in its first two pixels."""
    images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n) % 256
    images[:, 0, 1] = np.arange(n) // 256
    return images


def index_of(images: torch.Tensor) -> torch.Tensor:
    """Inverse of identifiable_images for (N, 1, H, W) tensors."""
    return images[:, 0, 0, 0].long() + 256 * images[:, 0, 0, 1].long()


def ppm_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, "RGB").save(buf, format="PPM")
    return buf.getvalue()


def resized(array: np.ndarray, size: int = 32) -> np.ndarray:
    """What the GTSRB reader should produce for one (H, W, 3) image, as (3, size, size)."""
    image = Image.fromarray(array, "RGB").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image).transpose(2, 0, 1)


def csv_text(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=";", lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------
# fixtures

N_TRAIN, N_TEST, IDX_SIZE = 300, 60, 28


@pytest.fixture
def idx_data(tmp_path):
    rng = np.random.default_rng(0)
    train_x = identifiable_images(N_TRAIN, IDX_SIZE, rng)
    test_x = identifiable_images(N_TEST, IDX_SIZE, rng)
    train_y = rng.integers(0, 10, size=N_TRAIN, dtype=np.uint8)
    test_y = rng.integers(0, 10, size=N_TEST, dtype=np.uint8)
    raw = write_idx_dir(tmp_path / "raw_idx", train_x, train_y, test_x, test_y)
    return raw, (train_x, train_y, test_x, test_y)


@pytest.fixture
def cifar_data(tmp_path, monkeypatch):
    """cifar-10-python.tar.gz with data_batch_1..5 (4 images each) and test_batch (6 images)."""
    rng = np.random.default_rng(1)
    batches = {}
    for i in range(1, 6):
        batches[f"data_batch_{i}"] = rng.integers(0, 256, size=(4, 3, 32, 32), dtype=np.uint8)
    batches["test_batch"] = rng.integers(0, 256, size=(6, 3, 32, 32), dtype=np.uint8)
    # a recognisable image: channels constant 10/20/30 except one marked pixel per channel
    marked = np.empty((3, 32, 32), dtype=np.uint8)
    marked[0], marked[1], marked[2] = 10, 20, 30
    marked[0, 0, 1] = 200   # red, row 0, column 1
    marked[1, 2, 3] = 201   # green, row 2, column 3
    marked[2, 31, 0] = 202  # blue, row 31, column 0
    batches["data_batch_1"][0] = marked
    labels = {name: [int(v) for v in rng.integers(0, 10, size=len(x))] for name, x in batches.items()}

    raw = tmp_path / "raw_cifar"
    members = {"batches.meta": pickle.dumps({"label_names": [b"airplane"] * 10, "num_vis": 3072}),
               "readme.html": b"<html></html>"}
    # test_batch first and batches out of order: the reader must not depend on tar order
    for name in ["test_batch", "data_batch_3", "data_batch_1", "data_batch_5", "data_batch_2", "data_batch_4"]:
        x = batches[name]
        entry = {"batch_label": name.encode(), "labels": labels[name],
                 "data": x.reshape(len(x), 3072),  # rows: 1024 R, 1024 G, 1024 B, each row-major
                 "filenames": [f"{name}_{j}.png".encode() for j in range(len(x))]}
        members[name] = pickle.dumps(entry, protocol=2)
    write_cifar_archive(raw, members, monkeypatch)
    train_x = np.concatenate([batches[f"data_batch_{i}"] for i in range(1, 6)])
    train_y = sum((labels[f"data_batch_{i}"] for i in range(1, 6)), [])
    return raw, (train_x, np.array(train_y), batches["test_batch"], np.array(labels["test_batch"]))


@pytest.fixture
def gtsrb_data(tmp_path):
    """The three GTSRB zips with a few PPMs of varied sizes, three training classes, five test images."""
    rng = np.random.default_rng(2)
    header = ["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"]
    raw = tmp_path / "raw_gtsrb"
    raw.mkdir()

    # every one of the 43 class folders holds images (the real archive's do; torchvision's reader
    # numbers classes by folder rank, which is the folder's number only when all 43 are there)
    train_sizes = {cls: [(8, 9)] for cls in range(43)}
    train_sizes.update({0: [(32, 32), (29, 41)], 1: [(45, 30)], 12: [(32, 32), (64, 50), (25, 25)]})
    train_expected_x, train_expected_y = [], []
    with zipfile.ZipFile(raw / GTSRB_ZIPS[0], "w") as zf:
        zf.writestr("GTSRB/Readme-Images.txt", "readme")
        for cls, sizes in train_sizes.items():
            folder = f"GTSRB/Training/{cls:05d}"
            rows = []
            for j, (w, h) in enumerate(sizes):
                image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                name = f"00000_{j:05d}.ppm"
                zf.writestr(f"{folder}/{name}", ppm_bytes(image))
                rows.append([name, w, h, 5, 5, w - 5, h - 5, cls])
                train_expected_x.append(image)
                train_expected_y.append(cls)
            zf.writestr(f"{folder}/GT-{cls:05d}.csv", csv_text(header, rows))

    test_sizes = [(32, 32), (50, 37), (31, 33), (40, 40), (28, 60)]
    test_labels = [7, 42, 0, 7, 3]  # deliberately unrelated to the file order
    test_images = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for w, h in test_sizes]
    with zipfile.ZipFile(raw / GTSRB_ZIPS[1], "w") as zf:
        # the real archive also ships a csv without ClassId next to the images
        zf.writestr("GTSRB/Final_Test/Images/GT-final_test.test.csv",
                    csv_text(header[:-1], [[f"{i:05d}.ppm", w, h, 1, 1, w - 1, h - 1]
                                           for i, (w, h) in enumerate(test_sizes)]))
        for i in [3, 0, 4, 1, 2]:  # zip order shuffled: the reader sorts by name
            zf.writestr(f"GTSRB/Final_Test/Images/{i:05d}.ppm", ppm_bytes(test_images[i]))
    gt_rows = [[f"{i:05d}.ppm", w, h, 1, 1, w - 1, h - 1, test_labels[i]]
               for i, (w, h) in enumerate(test_sizes)]
    gt_rows = [gt_rows[i] for i in [2, 4, 0, 3, 1]]  # csv order shuffled: labels matched by file name
    with zipfile.ZipFile(raw / GTSRB_ZIPS[2], "w") as zf:
        zf.writestr("GT-final_test.csv", csv_text(header, gt_rows))
    return raw, (train_expected_x, train_expected_y, test_images, test_labels)


def toy_spec(*files: RawFile, name: str = "toy", system_mirrors: tuple[str, ...] = ()) -> DatasetSpec:
    """A registry entry for generated files (specs are frozen, so a new one is built)."""
    return dataclasses.replace(get_dataset("fashion_mnist"), name=name, files=tuple(files),
                               system_mirrors=system_mirrors)


def toy_file(name: str, content: bytes, payload_md5: str | None = None) -> RawFile:
    return RawFile(name, f"https://example.invalid/{name}", md5_bytes(content), payload_md5)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------------------------------------------
# registry

OFFICIAL_MD5 = {  # the checksums torchvision's downloaders use for the same archives
    ("fashion_mnist", "train-images-idx3-ubyte.gz"): "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    ("fashion_mnist", "train-labels-idx1-ubyte.gz"): "25c81989df183df01b3e8a0aad5dffbe",
    ("fashion_mnist", "t10k-images-idx3-ubyte.gz"): "bef4ecab320f06d8554ea6380940ec79",
    ("fashion_mnist", "t10k-labels-idx1-ubyte.gz"): "bb300cfdad3c16e7a12a480ee83cd310",
    ("mnist", "train-images-idx3-ubyte.gz"): "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    ("mnist", "train-labels-idx1-ubyte.gz"): "d53e105ee54ea40749a09fcbcd1e9432",
    ("mnist", "t10k-images-idx3-ubyte.gz"): "9fb629c4189551a2d022fa330f9573f3",
    ("mnist", "t10k-labels-idx1-ubyte.gz"): "ec29112dd5afa0611ce80d1b7f02629c",
    ("cifar10", "cifar-10-python.tar.gz"): "c58f30108f718f92721af3b95e74349a",
    ("gtsrb", "GTSRB-Training_fixed.zip"): "513f3c79a4c5141765e10e952eaa2478",
    ("gtsrb", "GTSRB_Final_Test_Images.zip"): "c7e4e6327067d32654124b0fe9e82185",
    ("gtsrb", "GTSRB_Final_Test_GT.zip"): "fe31e9c9270bbcd7b84b7f21a9d9d9e5",
    ("tiny_imagenet", "tiny-imagenet-200.zip"): "90528d7ca1a48142e341f4ef8d21d0de",  # not in torchvision
}


def test_registry_lists_the_five_datasets_with_official_files():
    assert set(DATASETS) == {"fashion_mnist", "fashion_mnist_bg", "mnist", "cifar10", "gtsrb", "tiny_imagenet"}
    listed = {(spec.name, raw.name): raw.md5 for spec in DATASETS.values() for raw in spec.files
              if spec.source is None}
    assert listed == OFFICIAL_MD5
    for key, spec in DATASETS.items():
        assert spec.name == key and spec.format in READERS
        assert len(spec.mean) == len(spec.std) == spec.channels
        for raw in spec.files:
            assert re.fullmatch(r"https?://\S+", raw.url) and raw.url.endswith("/" + raw.name)
            for digest in (raw.md5, raw.payload_md5):
                assert digest is None or re.fullmatch(r"[0-9a-f]{32}", digest)


def test_registry_file_names_match_what_the_readers_open():
    assert {spec.format: tuple(raw.name for raw in spec.files) for spec in DATASETS.values()} == {
        "idx": IDX_NAMES, "cifar": ("cifar-10-python.tar.gz",), "gtsrb": GTSRB_ZIPS,
        "tiny_imagenet": ("tiny-imagenet-200.zip",)}
    shapes = {k: (s.channels, s.size, s.num_classes) for k, s in DATASETS.items()}
    assert shapes == {"fashion_mnist": (1, 28, 10), "fashion_mnist_bg": (1, 28, 10), "mnist": (1, 28, 10),
                      "cifar10": (3, 32, 10), "gtsrb": (3, 32, 43), "tiny_imagenet": (3, 64, 200)}


def test_registry_files_are_torchvisions():
    """The torch-free registry repeats torchvision's file names, URLs and MD5s; they must agree."""
    import inspect

    import torchvision.datasets as tvd

    for key in ("fashion_mnist", "mnist"):
        spec = get_dataset(key)
        cls = getattr(tvd, spec.torchvision)
        assert [(raw.name, raw.md5) for raw in spec.files] == [tuple(r) for r in cls.resources]
        assert all(raw.url == cls.mirrors[0] + raw.name for raw in spec.files) or key == "mnist"
        assert all(raw.url in [m + raw.name for m in cls.mirrors] for raw in spec.files)
    (cifar,) = get_dataset("cifar10").files
    assert (cifar.name, cifar.url, cifar.md5) == (tvd.CIFAR10.filename, tvd.CIFAR10.url, tvd.CIFAR10.tgz_md5)
    source = inspect.getsource(tvd.GTSRB.download)  # GTSRB's URLs and MD5s are literals in download()
    for raw in get_dataset("gtsrb").files:
        assert raw.md5 in source and raw.name in source and raw.url.startswith("https://sid.erda.dk/")
    assert get_dataset("tiny_imagenet").torchvision is None and not hasattr(tvd, "TinyImageNet")
    variant = DATASETS["fashion_mnist_bg"]
    assert variant.source == "fashion_mnist" and variant.files == DATASETS["fashion_mnist"].files


def test_fashion_mnist_has_payload_md5_for_the_debian_package():
    spec = get_dataset("fashion_mnist")
    assert all(raw.payload_md5 for raw in spec.files)
    assert "/usr/share/datasets/fashion-mnist" in spec.system_mirrors


def test_get_dataset_unknown_name_lists_known_ones():
    with pytest.raises(KeyError, match="cifar10, fashion_mnist, fashion_mnist_bg, gtsrb, mnist"):
        get_dataset("imagenet")


def test_specs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_dataset("mnist").name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_dataset("mnist").files[0].md5 = "0" * 32  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------------
# download: mirrors, checksums, URL path

BLOB = bytes(range(256)) * 64


def test_md5_of_plain_and_decompressed(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gz(BLOB))
    assert md5_of(path) == md5_bytes(gz(BLOB))
    assert md5_of(path, decompress=True) == md5_bytes(BLOB)


def test_mirror_folder_is_used(tmp_path):
    raw = toy_file("blob.bin", BLOB)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "blob.bin").write_bytes(BLOB)
    dest = tmp_path / "raw"
    path = fetch_file(raw, toy_spec(raw), dest, mirror=str(mirror), allow_network=False)
    assert path == dest / "blob.bin" and path.read_bytes() == BLOB
    assert leftovers(dest) == ["blob.bin"]  # no temporary .part file left
    assert (mirror / "blob.bin").read_bytes() == BLOB  # the mirror is copied from, not moved


def test_mirror_dataset_subfolder_is_used(tmp_path):
    raw = toy_file("blob.bin", BLOB)
    sub = tmp_path / "mirror" / "toy"
    sub.mkdir(parents=True)
    (sub / "blob.bin").write_bytes(BLOB)
    path = fetch_file(raw, toy_spec(raw), tmp_path / "raw", mirror=str(tmp_path / "mirror"),
                      allow_network=False)
    assert path.read_bytes() == BLOB


def test_system_mirror_folder_is_used(tmp_path):
    raw = toy_file("blob.bin", BLOB)
    system = tmp_path / "usr_share"
    system.mkdir()
    (system / "blob.bin").write_bytes(BLOB)
    path = fetch_file(raw, toy_spec(raw, system_mirrors=(str(system),)), tmp_path / "raw",
                      allow_network=False)
    assert path.read_bytes() == BLOB


def test_a_mirror_without_the_file_is_named_when_the_system_copy_is_used(tmp_path, capsys):
    raw = toy_file("blob.bin", BLOB)
    system = tmp_path / "usr_share"
    system.mkdir()
    (system / "blob.bin").write_bytes(BLOB)
    (tmp_path / "mirror").mkdir()
    fetch_file(raw, toy_spec(raw, system_mirrors=(str(system),)), tmp_path / "raw", mirror=str(tmp_path / "mirror"),
               allow_network=False)
    err = capsys.readouterr().err
    assert f"data.mirror = {tmp_path / 'mirror'} holds no blob.bin" in err and str(system / "blob.bin") in err


def test_prepare_re_verifies_the_raw_files(tmp_path):
    from backdoor import steps
    from backdoor.data.download import verify_dataset

    raw = toy_file("blob.bin", BLOB)
    folder = tmp_path / "raw" / "toy"
    folder.mkdir(parents=True)
    (folder / "blob.bin").write_bytes(BLOB)
    verify_dataset(toy_spec(raw), folder)  # intact: no error
    (folder / "blob.bin").write_bytes(BLOB[:-3])  # truncated after the download step
    with pytest.raises(ChecksumError, match=rf"mismatch for {folder / 'blob.bin'}.*Delete the folder {folder}"):
        verify_dataset(toy_spec(raw), folder)
    with pytest.raises(ChecksumError, match="train-images-idx3-ubyte.gz"):  # the step itself checks first
        (folder / "train-images-idx3-ubyte.gz").write_bytes(b"not the original")
        steps.prepare_dataset("fashion_mnist", str(folder), str(tmp_path / "out.pt"), {"clean_pool": 10, "seed": 0})
    assert not (tmp_path / "out.pt").exists()


def test_mirror_takes_precedence_over_network(tmp_path, monkeypatch):
    raw = toy_file("blob.bin", BLOB)
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "blob.bin").write_bytes(BLOB)
    # no_network fails the test if _download_url is called even though the network is allowed
    path = fetch_file(raw, toy_spec(raw), tmp_path / "raw", mirror=str(tmp_path / "mirror"),
                      allow_network=True)
    assert path.read_bytes() == BLOB


@pytest.mark.parametrize("subfolder", [False, True])
def test_corrupt_mirror_file_fails_clearly_and_leaves_nothing(tmp_path, subfolder):
    raw = toy_file("blob.bin", BLOB)
    folder = tmp_path / "mirror" / ("toy" if subfolder else "")
    folder.mkdir(parents=True, exist_ok=True)
    bad = folder / "blob.bin"
    bad.write_bytes(BLOB[:-100] + b"x" * 100)
    dest = tmp_path / "raw"
    with pytest.raises(ChecksumError) as info:
        fetch_file(raw, toy_spec(raw), dest, mirror=str(tmp_path / "mirror"), allow_network=False)
    message = str(info.value)
    assert str(bad) in message and raw.md5 in message
    assert "corrupt" in message and "Delete it" in message and "data.mirror" in message
    assert leftovers(dest) == []


def test_partial_mirror_file_fails(tmp_path):
    raw = toy_file("blob.bin", BLOB)
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "blob.bin").write_bytes(BLOB[: len(BLOB) // 3])
    with pytest.raises(ChecksumError, match="partially"):
        fetch_file(raw, toy_spec(raw), tmp_path / "raw", mirror=str(tmp_path / "mirror"))
    assert leftovers(tmp_path / "raw") == []


def test_existing_verified_file_is_kept(tmp_path):
    raw = toy_file("blob.bin", BLOB)
    dest = tmp_path / "raw"
    dest.mkdir()
    (dest / "blob.bin").write_bytes(BLOB)
    assert fetch_file(raw, toy_spec(raw), dest, allow_network=False).read_bytes() == BLOB


def test_existing_corrupt_file_is_replaced_from_mirror(tmp_path):
    raw = toy_file("blob.bin", BLOB)
    dest = tmp_path / "raw"
    dest.mkdir()
    (dest / "blob.bin").write_bytes(b"half a download")
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "blob.bin").write_bytes(BLOB)
    path = fetch_file(raw, toy_spec(raw), dest, mirror=str(tmp_path / "mirror"), allow_network=False)
    assert path.read_bytes() == BLOB


def test_existing_corrupt_file_is_removed_even_when_nothing_replaces_it(tmp_path):
    raw = toy_file("blob.bin", BLOB)
    dest = tmp_path / "raw"
    dest.mkdir()
    (dest / "blob.bin").write_bytes(b"half a download")
    with pytest.raises(FileNotFoundError):
        fetch_file(raw, toy_spec(raw), dest, allow_network=False)
    assert leftovers(dest) == []


def test_offline_without_mirror_says_what_to_do(tmp_path):
    raw = toy_file("blob.bin", BLOB)
    empty_mirror = tmp_path / "mirror"
    empty_mirror.mkdir()
    for mirror in (None, str(empty_mirror)):
        with pytest.raises(FileNotFoundError) as info:
            fetch_file(raw, toy_spec(raw), tmp_path / "raw", mirror=mirror, allow_network=False)
        message = str(info.value)
        assert "blob.bin" in message and "'toy'" in message
        assert "data.mirror" in message and "params.yaml" in message
    assert leftovers(tmp_path / "raw") == []


# gzip files: the original archive's MD5, or the MD5 of its decompressed content (Debian recompresses)

PAYLOAD = idx_bytes(np.arange(4 * 28 * 28, dtype=np.uint64).astype(np.uint8).reshape(4, 28, 28))
ORIGINAL_GZ = gz(PAYLOAD, level=9, mtime=0)
RECOMPRESSED_GZ = gz(PAYLOAD, level=1, mtime=1_234_567)


def gz_file() -> RawFile:
    return toy_file("t10k-images-idx3-ubyte.gz", ORIGINAL_GZ, payload_md5=md5_bytes(PAYLOAD))


def test_recompressed_gz_is_accepted_by_payload_md5(tmp_path):
    assert RECOMPRESSED_GZ != ORIGINAL_GZ
    raw = gz_file()
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / raw.name).write_bytes(RECOMPRESSED_GZ)
    path = fetch_file(raw, toy_spec(raw), tmp_path / "raw", mirror=str(tmp_path / "mirror"),
                      allow_network=False)
    assert path.read_bytes() == RECOMPRESSED_GZ and gzip.decompress(path.read_bytes()) == PAYLOAD


def test_recompressed_gz_without_payload_md5_is_rejected(tmp_path):
    raw = dataclasses.replace(gz_file(), payload_md5=None)
    path = tmp_path / raw.name
    path.write_bytes(RECOMPRESSED_GZ)
    assert not checksum_ok(path, raw)
    with pytest.raises(ChecksumError):
        verify(path, raw)


@pytest.mark.parametrize("damage", ["truncated", "corrupt_deflate", "not_gzip", "empty"])
def test_damaged_gz_with_payload_md5_gives_checksum_error(tmp_path, damage):
    data = bytearray(RECOMPRESSED_GZ)
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "corrupt_deflate":  # intact gzip header, garbage compressed stream
        for i in range(12, len(data) - 8):
            data[i] ^= 0xA5
    elif damage == "not_gzip":
        data = bytearray(b"<html>404 Not Found</html>")
    else:
        data = bytearray()
    raw = gz_file()
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / raw.name).write_bytes(bytes(data))
    assert not checksum_ok(tmp_path / "mirror" / raw.name, raw)
    with pytest.raises(ChecksumError, match=re.escape(raw.name)):
        fetch_file(raw, toy_spec(raw), tmp_path / "raw", mirror=str(tmp_path / "mirror"),
                   allow_network=False)
    assert leftovers(tmp_path / "raw") == []


def test_url_download_is_verified(tmp_path, monkeypatch):
    raw = toy_file("blob.bin", BLOB)
    calls = []

    def fake_download(url, dest):
        calls.append((url, dest))
        dest.write_bytes(BLOB)
    monkeypatch.setattr(download, "_download_url", fake_download)
    (tmp_path / "raw").mkdir()
    path = fetch_file(raw, toy_spec(raw), tmp_path / "raw", allow_network=True)
    assert calls == [(raw.url, tmp_path / "raw" / "blob.bin")]
    assert path.read_bytes() == BLOB


def test_partial_url_download_is_removed(tmp_path, monkeypatch):
    raw = toy_file("blob.bin", BLOB)
    monkeypatch.setattr(download, "_download_url", lambda url, dest: dest.write_bytes(BLOB[:1000]))
    (tmp_path / "raw").mkdir()
    with pytest.raises(ChecksumError, match="blob.bin"):
        fetch_file(raw, toy_spec(raw), tmp_path / "raw")
    assert leftovers(tmp_path / "raw") == []


@pytest.mark.parametrize("error", [urllib.error.URLError("no route to host"), TimeoutError("timed out"),
                                   http.client.IncompleteRead(b"partial", 1000)])
def test_failed_url_download_says_what_to_do(tmp_path, monkeypatch, error):
    raw = toy_file("blob.bin", BLOB)

    def fail(url, dest):
        raise error
    monkeypatch.setattr(download, "_download_url", fail)
    with pytest.raises(RuntimeError, match="data.mirror") as info:
        fetch_file(raw, toy_spec(raw), tmp_path / "raw")
    assert raw.url in str(info.value) and info.value.__cause__ is error
    assert leftovers(tmp_path / "raw") == []


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server (127.0.0.1, no network) serving tmp_path/server; yields its base URL."""
    import functools
    import http.server
    import threading

    folder = tmp_path / "server"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_real_download_function_writes_atomically(tmp_path, monkeypatch, http_server):
    """The real _download_url (torchvision's downloader) from a local HTTP server: the file arrives
    whole and verified; a missing file (404) leaves nothing behind."""
    (tmp_path / "server" / "blob.bin").write_bytes(BLOB)
    raw = RawFile("blob.bin", http_server + "blob.bin", md5_bytes(BLOB))
    monkeypatch.setattr(download, "_download_url", _REAL_DOWNLOAD_URL)
    path = fetch_file(raw, toy_spec(raw), tmp_path / "raw")
    assert path.read_bytes() == BLOB and leftovers(tmp_path / "raw") == ["blob.bin"]

    missing = RawFile("gone.bin", http_server + "gone.bin", md5_bytes(BLOB))
    with pytest.raises(RuntimeError, match="could not download"):
        fetch_file(missing, toy_spec(missing), tmp_path / "raw")
    assert leftovers(tmp_path / "raw") == ["blob.bin"]


def test_fetch_dataset_fetches_every_file_in_order(tmp_path):
    files = [(name, gz(name.encode() * 50)) for name in IDX_NAMES]
    raws = [toy_file(name, content) for name, content in files]
    mirror = tmp_path / "mirror"
    (mirror / "toy").mkdir(parents=True)
    for i, (name, content) in enumerate(files):  # half at the top, half in the dataset subfolder
        (mirror / ("toy" if i % 2 else "") / name).write_bytes(content)
    dest = tmp_path / "deep" / "raw" / "toy"
    paths = fetch_dataset(toy_spec(*raws), dest, mirror=str(mirror), allow_network=False)
    assert paths == [dest / name for name in IDX_NAMES]
    assert [p.read_bytes() for p in paths] == [content for _, content in files]


# ---------------------------------------------------------------------------------------------------
# IDX reader

def test_idx_header_is_the_real_format():
    images = idx_bytes(np.zeros((2, 28, 27), dtype=np.uint8))
    labels = idx_bytes(np.zeros(5, dtype=np.uint8))
    assert images[:16] == bytes.fromhex("00000803" "00000002" "0000001c" "0000001b")
    assert labels[:8] == bytes.fromhex("00000801" "00000005")


@pytest.mark.parametrize("damage", ["magic", "truncated"])
def test_read_idx_dataset_rejects_a_damaged_file_clearly(idx_data, damage):
    raw, (train_x, *_) = idx_data
    good = idx_bytes(train_x)
    bad = (b"\x00\x00\x77" + good[3:]) if damage == "magic" else good[:-3]
    (raw / IDX_NAMES[0]).write_bytes(gz(bad))
    with pytest.raises(ValueError, match="training IDX files are not readable"):
        read_idx_dataset(raw)


def test_read_idx_dataset_keeps_exact_pixels(idx_data):
    raw, (train_x, train_y, test_x, test_y) = idx_data
    tx, ty, vx, vy = read_idx_dataset(raw)
    assert tx.dtype == vx.dtype == torch.uint8 and ty.dtype == vy.dtype == torch.int64
    assert tx.shape == (N_TRAIN, 1, IDX_SIZE, IDX_SIZE) and vx.shape == (N_TEST, 1, IDX_SIZE, IDX_SIZE)
    np.testing.assert_array_equal(tx[:, 0].numpy(), train_x)
    np.testing.assert_array_equal(vx[:, 0].numpy(), test_x)
    np.testing.assert_array_equal(ty.numpy(), train_y)
    np.testing.assert_array_equal(vy.numpy(), test_y)


# ---------------------------------------------------------------------------------------------------
# CIFAR-10 reader

def test_read_cifar_keeps_exact_pixels_in_chw_order(cifar_data):
    raw, (train_x, train_y, test_x, test_y) = cifar_data
    tx, ty, vx, vy = read_cifar(raw)
    assert tx.dtype == vx.dtype == torch.uint8 and ty.dtype == vy.dtype == torch.int64
    assert tx.shape == (20, 3, 32, 32) and vx.shape == (6, 3, 32, 32)
    assert tx.is_contiguous()
    np.testing.assert_array_equal(tx.numpy(), train_x)  # batches 1..5 in order, whatever the tar order
    np.testing.assert_array_equal(ty.numpy(), train_y)
    np.testing.assert_array_equal(vx.numpy(), test_x)
    np.testing.assert_array_equal(vy.numpy(), test_y)
    # the marked image: channel planes first, then rows, then columns
    first = tx[0]
    assert first[:, 5, 5].tolist() == [10, 20, 30]
    assert first[0, 0, 1] == 200 and first[1, 2, 3] == 201 and first[2, 31, 0] == 202
    assert READERS["cifar"] is read_cifar


def test_read_cifar_without_test_batch_fails(tmp_path, monkeypatch):
    payload = pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [0]})
    write_cifar_archive(tmp_path, {f"data_batch_{i}": payload for i in range(1, 6)}, monkeypatch)
    with pytest.raises(ValueError, match="cifar-10-python.tar.gz: Dataset not found or corrupted"):
        read_cifar(tmp_path)


def test_read_cifar_rejects_a_batch_whose_md5_differs(cifar_data, monkeypatch):
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", "0" * 32]])  # torchvision's own check
    with pytest.raises(ValueError, match="corrupted"):
        read_cifar(cifar_data[0])


# ---------------------------------------------------------------------------------------------------
# GTSRB reader

def test_read_gtsrb_resizes_to_32_and_matches_labels_from_csv(gtsrb_data):
    raw, (train_imgs, train_labels, test_imgs, test_labels) = gtsrb_data
    tx, ty, vx, vy = read_gtsrb(raw)
    assert tx.dtype == vx.dtype == torch.uint8 and ty.dtype == vy.dtype == torch.int64
    assert tx.shape == (len(train_imgs), 3, 32, 32) and vx.shape == (len(test_imgs), 3, 32, 32)
    assert ty.tolist() == train_labels and train_labels[:7] == [0, 0, 1, 2, 3, 4, 5]
    assert ty.tolist()[12:16] == [11, 12, 12, 12]
    order = [2, 4, 0, 3, 1]  # test images in the ground-truth csv's row order, as torchvision reads them
    assert vy.tolist() == [test_labels[i] for i in order]
    np.testing.assert_array_equal(tx.numpy(), np.stack([resized(a) for a in train_imgs]))
    np.testing.assert_array_equal(vx.numpy(), np.stack([resized(test_imgs[i]) for i in order]))
    # 32×32 originals come through untouched (HWC → CHW only)
    np.testing.assert_array_equal(tx[0].numpy(), train_imgs[0].transpose(2, 0, 1))
    np.testing.assert_array_equal(vx[2].numpy(), test_imgs[0].transpose(2, 0, 1))
    assert READERS["gtsrb"] is read_gtsrb


def test_read_gtsrb_other_size(gtsrb_data):
    raw, (train_imgs, _, test_imgs, _) = gtsrb_data
    tx, _, vx, _ = read_gtsrb(raw, size=16)
    assert tx.shape == (len(train_imgs), 3, 16, 16) and vx.shape == (len(test_imgs), 3, 16, 16)
    np.testing.assert_array_equal(vx[4].numpy(), resized(test_imgs[1], 16))


# ---------------------------------------------------------------------------------------------------
# Tiny-ImageNet reader (not in torchvision: ImageFolder + val_annotations.txt)

def jpeg_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def decoded(jpeg: bytes) -> np.ndarray:
    """What any reader must get from a JPEG: PIL's decoding, as RGB, (3, H, W)."""
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).transpose(2, 0, 1)


@pytest.fixture
def tiny_imagenet_data(tmp_path):
    """tiny-imagenet-200.zip in the official layout: wnids.txt, words.txt, train/<wnid>/images/*.JPEG
    with <wnid>_boxes.txt, val/images + val/val_annotations.txt, unlabelled test/images. Three
    classes (wnids.txt deliberately not sorted), one greyscale training image, as in the real set."""
    rng = np.random.default_rng(4)
    wnids = ["n02124075", "n01443537", "n09193705"]
    raw = tmp_path / "raw_tiny"
    raw.mkdir()
    train, val = [], []
    with zipfile.ZipFile(raw / "tiny-imagenet-200.zip", "w") as zf:
        top = "tiny-imagenet-200"
        zf.writestr(f"{top}/wnids.txt", "\n".join(wnids) + "\n")
        zf.writestr(f"{top}/words.txt", "".join(f"{w}\tthing {i}\n" for i, w in enumerate(wnids + ["n00000001"])))
        for wnid in sorted(wnids):  # ImageFolder's order (the expected tensors follow it)
            boxes = []
            for j in range(3):
                shape = (64, 64) if (wnid, j) == ("n09193705", 1) else (64, 64, 3)
                jpeg = jpeg_bytes(rng.integers(0, 256, size=shape, dtype=np.uint8))
                zf.writestr(f"{top}/train/{wnid}/images/{wnid}_{j}.JPEG", jpeg)
                boxes.append(f"{wnid}_{j}.JPEG\t0\t0\t63\t63\n")
                train.append((jpeg, sorted(wnids).index(wnid)))
            zf.writestr(f"{top}/train/{wnid}/{wnid}_boxes.txt", "".join(boxes))
        notes = []
        for i, wnid in enumerate([wnids[2], wnids[0], wnids[2], wnids[1]]):
            jpeg = jpeg_bytes(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8))
            zf.writestr(f"{top}/val/images/val_{i}.JPEG", jpeg)
            notes.append(f"val_{i}.JPEG\t{wnid}\t1\t2\t60\t61\n")
            val.append((jpeg, sorted(wnids).index(wnid)))
        zf.writestr(f"{top}/val/val_annotations.txt", "".join(notes))
        zf.writestr(f"{top}/test/images/test_0.JPEG", jpeg_bytes(np.zeros((64, 64, 3), np.uint8)))
    return raw, train, val


def test_read_tiny_imagenet_labels_by_sorted_wnid_and_uses_val_as_test(tiny_imagenet_data):
    raw, train, val = tiny_imagenet_data
    tx, ty, vx, vy = read_tiny_imagenet(raw)
    assert tx.dtype == vx.dtype == torch.uint8 and ty.dtype == vy.dtype == torch.int64
    assert tx.shape == (9, 3, 64, 64) and vx.shape == (4, 3, 64, 64)
    assert ty.tolist() == [y for _, y in train] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert vy.tolist() == [y for _, y in val] == [2, 1, 2, 0]  # from val_annotations.txt; test/ unused
    np.testing.assert_array_equal(tx.numpy(), np.stack([decoded(j) for j, _ in train]))  # greyscale → RGB
    np.testing.assert_array_equal(vx.numpy(), np.stack([decoded(j) for j, _ in val]))
    assert READERS["tiny_imagenet"] is read_tiny_imagenet


def test_prepare_tiny_imagenet_and_a_wrong_archive(tiny_imagenet_data, tmp_path):
    prepared = prepare("tiny_imagenet", tiny_imagenet_data[0], SplitParams(clean_pool=3, seed=0))
    assert prepared["num_classes"] == 200 and prepared["train_x"].shape == (9, 3, 64, 64)
    assert len(prepared["pool_idx"]) == 3 and len(prepared["attacker_idx"]) == 6
    other = tmp_path / "other"
    other.mkdir()
    with zipfile.ZipFile(other / "tiny-imagenet-200.zip", "w") as zf:
        zf.writestr("something/else.txt", "x")
    with pytest.raises(ValueError, match="wnids.txt: not the official archive"):
        read_tiny_imagenet(other)


# ---------------------------------------------------------------------------------------------------
# prepare: seeded splits

def test_prepare_splits_are_disjoint_sorted_and_cover_the_training_set(idx_data):
    raw, (train_x, train_y, test_x, test_y) = idx_data
    out = prepare("fashion_mnist", raw, SplitParams(clean_pool=50, seed=0))
    attacker, pool = out["attacker_idx"], out["pool_idx"]
    assert attacker.dtype == pool.dtype == torch.int64
    assert len(pool) == 50 and len(attacker) == N_TRAIN - 50
    assert torch.equal(attacker, attacker.sort().values) and torch.equal(pool, pool.sort().values)
    assert not set(attacker.tolist()) & set(pool.tolist())
    assert sorted(attacker.tolist() + pool.tolist()) == list(range(N_TRAIN))
    np.testing.assert_array_equal(out["train_x"][:, 0].numpy(), train_x)
    np.testing.assert_array_equal(out["train_y"].numpy(), train_y)
    np.testing.assert_array_equal(out["test_x"][:, 0].numpy(), test_x)  # no test_limit: all of it
    np.testing.assert_array_equal(out["test_y"].numpy(), test_y)
    spec = get_dataset("fashion_mnist")
    assert out["dataset"] == "fashion_mnist" and out["num_classes"] == 10
    assert out["mean"] == list(spec.mean) and out["std"] == list(spec.std)


def test_prepare_pool_is_random_not_a_prefix(idx_data):
    out = prepare("fashion_mnist", idx_data[0], SplitParams(clean_pool=50, seed=0))
    assert out["pool_idx"].tolist() != list(range(50))


def test_prepare_is_seeded(idx_data):
    raw = idx_data[0]
    params = dict(clean_pool=40, train_limit=200, test_limit=30)
    a = prepare("fashion_mnist", raw, SplitParams(seed=7, **params))
    b = prepare("fashion_mnist", raw, SplitParams(seed=7, **params))
    c = prepare("fashion_mnist", raw, SplitParams(seed=8, **params))
    for key in ("attacker_idx", "pool_idx", "test_x", "test_y"):
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["pool_idx"], c["pool_idx"])
    assert not torch.equal(a["attacker_idx"], c["attacker_idx"])
    assert not torch.equal(index_of(a["test_x"]), index_of(c["test_x"]))


def test_prepare_train_and_test_limits(idx_data):
    raw, (train_x, train_y, test_x, test_y) = idx_data
    out = prepare("fashion_mnist", raw, SplitParams(clean_pool=30, seed=3, train_limit=120, test_limit=25))
    attacker, pool = out["attacker_idx"], out["pool_idx"]
    assert len(pool) == 30 and len(attacker) == 90
    assert not set(attacker.tolist()) & set(pool.tolist())
    assert max(attacker.max(), pool.max()) < N_TRAIN
    assert len(out["train_x"]) == N_TRAIN  # indices point into the full official training set
    # the test subset: original images, in original order, with their own labels
    assert out["test_x"].shape == (25, 1, IDX_SIZE, IDX_SIZE) and len(out["test_y"]) == 25
    kept = index_of(out["test_x"])
    assert torch.all(kept[1:] > kept[:-1]) and int(kept.max()) < N_TEST
    np.testing.assert_array_equal(out["test_x"][:, 0].numpy(), test_x[kept.numpy()])
    np.testing.assert_array_equal(out["test_y"].numpy(), test_y[kept.numpy()])


def test_prepare_limits_larger_than_the_data_keep_everything(idx_data):
    out = prepare("fashion_mnist", idx_data[0],
                  SplitParams(clean_pool=10, seed=0, train_limit=10**6, test_limit=10**6))
    assert len(out["pool_idx"]) + len(out["attacker_idx"]) == N_TRAIN
    assert len(out["test_y"]) == N_TEST


@pytest.mark.parametrize("pool, limit", [(N_TRAIN, None), (N_TRAIN + 1, None), (100, 100), (150, 100)])
def test_prepare_too_large_clean_pool_names_the_parameter(idx_data, pool, limit):
    with pytest.raises(ValueError, match=r"splits\.clean_pool") as info:
        prepare("fashion_mnist", idx_data[0], SplitParams(clean_pool=pool, seed=0, train_limit=limit))
    assert str(limit or N_TRAIN) in str(info.value)


def test_prepare_other_formats(cifar_data, gtsrb_data):
    cifar = prepare("cifar10", cifar_data[0], SplitParams(clean_pool=5, seed=1))
    assert cifar["train_x"].shape == (20, 3, 32, 32) and len(cifar["attacker_idx"]) == 15
    gtsrb = prepare("gtsrb", gtsrb_data[0], SplitParams(clean_pool=2, seed=1, test_limit=3))
    assert gtsrb["num_classes"] == 43 and gtsrb["test_x"].shape == (3, 3, 32, 32)
    assert len(gtsrb["pool_idx"]) == 2 and len(gtsrb["attacker_idx"]) == 44


def test_prepare_unknown_dataset(idx_data):
    with pytest.raises(KeyError, match="unknown dataset"):
        prepare("svhn", idx_data[0], SplitParams(clean_pool=1, seed=0))


# ---------------------------------------------------------------------------------------------------
# the real Fashion-MNIST from Debian's dataset-fashion-mnist package, when installed

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_debian_fashion_mnist_verifies_and_reads(tmp_path):
    spec = get_dataset("fashion_mnist")
    paths = fetch_dataset(spec, tmp_path / "raw", allow_network=False)
    assert tuple(p.name for p in paths) == IDX_NAMES
    for path, raw in zip(paths, spec.files):
        assert checksum_ok(path, raw)
    tx, ty, vx, vy = read_idx_dataset(tmp_path / "raw")
    assert tx.shape == (60000, 1, 28, 28) and vx.shape == (10000, 1, 28, 28)
    assert tx.dtype == vx.dtype == torch.uint8 and ty.dtype == vy.dtype == torch.int64
    assert torch.bincount(ty).tolist() == [6000] * 10 and torch.bincount(vy).tolist() == [1000] * 10


def test_the_nonzero_background_variant_keeps_objects_and_fills_the_background(idx_data):
    raw, _ = idx_data
    params = SplitParams(clean_pool=40, seed=7, train_limit=200, test_limit=30)
    plain = prepare("fashion_mnist", raw, params)
    bg = prepare("fashion_mnist_bg", raw, params)
    again = prepare("fashion_mnist_bg", raw, params)
    assert torch.equal(bg["train_x"], again["train_x"]) and torch.equal(bg["pool_idx"], plain["pool_idx"])
    for key in ("train_x", "test_x"):
        assert torch.equal(bg[key], torch.maximum(plain[key], bg[key]))  # only ever raised
        assert bg[key].max() >= plain[key].max() and (bg[key][plain[key] > 96] == plain[key][plain[key] > 96]).all()
        zero = plain[key] == 0
        assert (bg[key][zero] > 0).float().mean() > 0.95 and bg[key][zero].max() <= 96
    assert bg["mean"][0] > 0 and bg["std"][0] > 0 and bg["mean"] != plain["mean"]


def test_badnets_center_puts_the_patch_over_the_object():
    from backdoor.attacks import AttackContext, build_attack

    images = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    out = build_attack("badnets", {"patch_size": 3, "position": "center"}, AttackContext(10, 1, 28)).apply_trigger(images)
    assert (out[:, :, 12:15, 12:15] == 255).all() and out.sum() == 2 * 9 * 255
    with pytest.raises(ValueError, match="position: 'left' is not allowed; allowed values: corner, center"):
        build_attack("badnets", {"position": "left"}, AttackContext(10, 1, 28))


def test_tiny_imagenet_runs_through_poison_and_train(tiny_imagenet_data, tmp_path):
    """64×64 images and 200 classes through the library's steps (the attacks scale to the size)."""
    import yaml

    from backdoor import params as P
    from backdoor import steps
    from backdoor.io import read_json, save_tensors

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    prepared = tmp_path / "prepared.pt"
    save_tensors(prepare("tiny_imagenet", tiny_imagenet_data[0], SplitParams(clean_pool=2, seed=0)), prepared)
    for attack in ("badnets", "wanet"):
        poisoned, model, metrics = (tmp_path / f"{attack}{ext}" for ext in (".pt", "-model.pt", "-model.json"))
        steps.poison(str(prepared), str(poisoned), attack, P.entry(config, "attacks", attack).to_dict())
        steps.train(str(prepared), str(poisoned), str(model), str(metrics),
                    {**P.entry(config, "models", "cnn").to_dict(), "width": 4},
                    {**P.section(config, "train").to_dict(), "epochs": 1}, seed=0, device="cpu", precision="fp32")
        assert 0 <= read_json(metrics)["acc"] <= 100
