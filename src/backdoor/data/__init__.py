"""Datasets: registry, download (mirror + checksum), original-format readers, prepared splits."""

from .registry import DATASETS, DatasetSpec, RawFile, get_dataset

__all__ = ["DATASETS", "DatasetSpec", "RawFile", "get_dataset"]
