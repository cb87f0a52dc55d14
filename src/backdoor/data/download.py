"""Fetch a dataset's original files: from a local mirror folder, an OS package, or the official URL.

Downloads go through ``torchvision.datasets.utils.download_url`` (redirects, its MD5 check). What
torchvision lacks is kept here: local mirrors first (``data.mirror``, Debian's
``dataset-fashion-mnist``), the MD5 of a .gz file's *payload* (torchvision's check hashes the
compressed bytes, so it rejects Debian's recompressed — but byte-identical once decompressed —
Fashion-MNIST files), atomic placement, and errors that say what to do. Every file is checked
before it is accepted; a corrupt or partial file is removed.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import shutil
import sys
import zlib
from pathlib import Path


from ..io import atomic_path
from .registry import DatasetSpec, RawFile


class ChecksumError(RuntimeError):
    pass


def md5_of(path: Path, decompress: bool = False) -> str:
    digest = hashlib.md5()
    opener = gzip.open if decompress else open
    with opener(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_ok(path: Path, raw: RawFile) -> bool:
    """True if the file is the original archive, or (for .gz) holds the original payload."""
    if md5_of(path) == raw.md5:
        return True
    if raw.payload_md5 and path.name.endswith(".gz"):
        try:
            return md5_of(path, decompress=True) == raw.payload_md5
        except (OSError, EOFError, zlib.error):  # truncated, corrupt deflate data, or not gzip at all
            return False
    return False


def verify(path: Path, raw: RawFile, fix: str | None = None) -> None:
    """ChecksumError naming ``path`` and what to do (``fix``, by default: delete it and download again)."""
    if not checksum_ok(path, raw):
        fix = fix or (f"Delete it and run the download step again, or set data.mirror in params.yaml to a "
                      f"folder that holds the original {raw.name}.")
        raise ChecksumError(f"checksum mismatch for {path} (expected md5 {raw.md5}): the file is corrupt or "
                            f"partially downloaded. {fix}")


def verify_dataset(spec: DatasetSpec, raw_dir: str | Path) -> None:
    """Re-check every raw file of ``spec`` in ``raw_dir`` (the prepare step does, before reading)."""
    fix = (f"Delete the folder {raw_dir} and run the study again: the download step fetches a verified "
           "copy (under DVC, `dvc checkout` restores the recorded one).")
    for raw in spec.files:
        path = Path(raw_dir) / raw.name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {fix}")
        verify(path, raw, fix)


def _download_url(url: str, dest: Path) -> None:
    """torchvision's downloader (progress bar, redirects) into a temporary name, renamed when whole."""
    from torchvision.datasets.utils import download_url

    with atomic_path(dest) as tmp:
        tmp.unlink()  # download_url skips a file that exists (no MD5 given)
        download_url(url, str(tmp.parent), filename=tmp.name)


def _candidates(raw: RawFile, spec: DatasetSpec, mirror: str | None) -> list[Path]:
    folders = ([Path(mirror), Path(mirror) / spec.files_of] if mirror else []) + \
        [Path(p) for p in spec.system_mirrors]
    return [folder / raw.name for folder in folders if (folder / raw.name).is_file()]


def fetch_file(raw: RawFile, spec: DatasetSpec, dest_dir: Path, mirror: str | None = None,
               allow_network: bool = True) -> Path:
    """Place a verified copy of ``raw`` in ``dest_dir``; local copies are preferred to the network."""
    dest = dest_dir / raw.name
    if dest.exists():
        if checksum_ok(dest, raw):
            return dest
        dest.unlink()  # a partial or corrupt earlier attempt
    candidates = _candidates(raw, spec, mirror)
    if mirror and not any(c.parent in (Path(mirror), Path(mirror) / spec.name) for c in candidates):
        print(f"download {spec.name}: data.mirror = {mirror} holds no {raw.name} (nor {spec.name}/{raw.name}); "
              + (f"using {candidates[0]}" if candidates else "trying the network"), file=sys.stderr)
    for local in candidates:
        verify(local, raw)
        with atomic_path(dest) as tmp:
            shutil.copyfile(local, tmp)
        print(f"download {spec.name}: {raw.name} copied from {local} (checksum verified)")
        return dest
    if not allow_network:
        raise FileNotFoundError(
            f"{raw.name} for dataset {spec.name!r} is not in any local mirror and network downloads are "
            f"off: set data.mirror in params.yaml to a folder holding the original files.")
    try:
        _download_url(raw.url, dest)
    except (OSError, http.client.HTTPException) as err:  # IncompleteRead: connection cut mid-file
        raise RuntimeError(
            f"could not download {raw.url} ({err}). On an offline machine, copy the original files into "
            f"a folder and set data.mirror in params.yaml to it.") from err
    try:
        verify(dest, raw)
    except ChecksumError:
        dest.unlink()
        raise
    print(f"download {spec.name}: {raw.name} downloaded from {raw.url} (checksum verified)")
    return dest


def fetch_dataset(spec: DatasetSpec, dest_dir: str | Path, mirror: str | None = None,
                  allow_network: bool = True) -> list[Path]:
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    return [fetch_file(raw, spec, dest_dir, mirror, allow_network) for raw in spec.files]
