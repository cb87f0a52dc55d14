"""The dataset registry: what each dataset is, where its original files come from, how to check them.

URLs and MD5 sums are those of the official archives, the same as torchvision's dataset classes
(a test compares them; this module stays free of torch so that parsing the study never imports it).
``payload_md5`` is the MD5 of a gzip file's *decompressed* content: Debian's `dataset-fashion-mnist`
package recompresses the original IDX files, so its .gz bytes differ while the IDX content is the
original. A file is accepted when either checksum matches.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class RawFile:
    name: str
    url: str
    md5: str
    payload_md5: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    format: str  # reader in backdoor.data.formats
    channels: int
    size: int  # images are size × size after preparation
    num_classes: int
    train_size: int  # images in the official training set
    mean: tuple[float, ...]
    std: tuple[float, ...]
    files: tuple[RawFile, ...]
    system_mirrors: tuple[str, ...] = field(default=())  # folders an OS package may install
    source: str | None = None  # a variant: the dataset whose original files it is made from
    background: int = 0  # a variant: zero-valued pixels raised to seeded uniform noise in [0, background]
    torchvision: str | None = None  # the torchvision.datasets class that reads the files (None: not in torchvision)

    @property
    def files_of(self) -> str:
        """The dataset whose files these are (the mirror subfolder to look in)."""
        return self.source or self.name


_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_GTSRB = "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/"

DATASETS: dict[str, DatasetSpec] = {
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist", format="idx", channels=1, size=28, num_classes=10, train_size=60000,
        mean=(0.2860,), std=(0.3530,),
        files=(
            RawFile("train-images-idx3-ubyte.gz", _FASHION + "train-images-idx3-ubyte.gz",
                    "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
            RawFile("train-labels-idx1-ubyte.gz", _FASHION + "train-labels-idx1-ubyte.gz",
                    "25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"),
            RawFile("t10k-images-idx3-ubyte.gz", _FASHION + "t10k-images-idx3-ubyte.gz",
                    "bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"),
            RawFile("t10k-labels-idx1-ubyte.gz", _FASHION + "t10k-labels-idx1-ubyte.gz",
                    "bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965"),
        ),
        system_mirrors=("/usr/share/datasets/fashion-mnist",), torchvision="FashionMNIST",
    ),
    "mnist": DatasetSpec(
        name="mnist", format="idx", channels=1, size=28, num_classes=10, train_size=60000,
        mean=(0.1307,), std=(0.3081,),
        files=(
            RawFile("train-images-idx3-ubyte.gz", _MNIST + "train-images-idx3-ubyte.gz",
                    "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            RawFile("train-labels-idx1-ubyte.gz", _MNIST + "train-labels-idx1-ubyte.gz",
                    "d53e105ee54ea40749a09fcbcd1e9432"),
            RawFile("t10k-images-idx3-ubyte.gz", _MNIST + "t10k-images-idx3-ubyte.gz",
                    "9fb629c4189551a2d022fa330f9573f3"),
            RawFile("t10k-labels-idx1-ubyte.gz", _MNIST + "t10k-labels-idx1-ubyte.gz",
                    "ec29112dd5afa0611ce80d1b7f02629c"),
        ),
        torchvision="MNIST",
    ),
    "cifar10": DatasetSpec(
        name="cifar10", format="cifar", channels=3, size=32, num_classes=10, train_size=50000,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        files=(
            RawFile("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                    "c58f30108f718f92721af3b95e74349a"),
        ),
        torchvision="CIFAR10",
    ),
    "gtsrb": DatasetSpec(
        name="gtsrb", format="gtsrb", channels=3, size=32, num_classes=43, train_size=39209,
        mean=(0.3403, 0.3121, 0.3214), std=(0.2724, 0.2608, 0.2669),
        files=(
            RawFile("GTSRB-Training_fixed.zip", _GTSRB + "GTSRB-Training_fixed.zip",
                    "513f3c79a4c5141765e10e952eaa2478"),
            RawFile("GTSRB_Final_Test_Images.zip", _GTSRB + "GTSRB_Final_Test_Images.zip",
                    "c7e4e6327067d32654124b0fe9e82185"),
            RawFile("GTSRB_Final_Test_GT.zip", _GTSRB + "GTSRB_Final_Test_GT.zip",
                    "fe31e9c9270bbcd7b84b7f21a9d9d9e5"),
        ),
        torchvision="GTSRB",
    ),
    # Stanford CS231n's Tiny-ImageNet (64×64, 200 ImageNet classes, 500 training images each; its
    # labelled validation set is the test set). Mean and std of the 100,000 training images.
    "tiny_imagenet": DatasetSpec(
        name="tiny_imagenet", format="tiny_imagenet", channels=3, size=64, num_classes=200, train_size=100000,
        mean=(0.4802, 0.4481, 0.3975), std=(0.2770, 0.2691, 0.2821),
        files=(
            RawFile("tiny-imagenet-200.zip", "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
                    "90528d7ca1a48142e341f4ef8d21d0de"),
        ),
    ),
}


# Fashion-MNIST whose background is not zero (issue: why the default resists purification): every
# pixel becomes max(pixel, noise), noise uniform in 0..96 and fixed by splits.seed, so a corner
# patch or the background of a blend pattern lands on pixels that clean images activate too.
# Mean and std are measured on the prepared training set.
DATASETS["fashion_mnist_bg"] = replace(DATASETS["fashion_mnist"], name="fashion_mnist_bg", source="fashion_mnist",
                                       background=96)


def get_dataset(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r} (study.datasets in params.yaml); "
                       f"known datasets: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]
