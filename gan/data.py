"""Datasets as one in-memory tensor: images (N, C, H, W) float32 in [-1, 1], labels (N,) int64.

No DataLoader and no per-sample transforms: the whole split is normalized once and indexed by
batch on the training device.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import math
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gan.config import DataConfig
from gan.errors import UserError
from gan.files import atomic_file

IMAGE_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28)}
DATASETS = tuple(IMAGE_SHAPES)
# 360 of scikit-learn's 1,797 digits (≈ 20 %, a fixed random draw) are the test split.
DIGITS_TEST_SIZE = 360
FASHION_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
OFFLINE_ROUTES = (
    "Offline routes: `dataset=digits` (bundled with scikit-learn), or `dataset=fashion_mnist` "
    "with Debian's package (`apt-get install dataset-fashion-mnist`, files in "
    "/usr/share/datasets/fashion-mnist)."
)


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # (N, C, H, W) float32 in [-1, 1]
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return self.images.shape[0]


def image_shape(name: str) -> tuple[int, int, int]:
    if name not in IMAGE_SHAPES:
        raise UserError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    return IMAGE_SHAPES[name]


def load(source: DataConfig, *, train: bool) -> Split:
    """The train or test split of ``source.name``: unpacked from ``source.offline_dir`` when it
    holds the files, else downloaded once into ``source.root`` (each network operation bounded by
    ``source.download_timeout``)."""
    image_shape(source.name)
    if source.name == "digits":
        return _digits(train)
    root = Path(source.root)
    if source.name == "fashion_mnist" and source.offline_dir is not None:
        _unpack_offline_fashion(Path(source.offline_dir), root / "FashionMNIST" / "raw")
    return _torchvision(source.name, root, train, source.download_timeout)


def ensure_dir(root: Path) -> Path:
    """``data_dir`` as a writable directory; created when missing, provided its parent exists
    (a missing parent is more likely a typo than an intent)."""
    root = Path(root)
    if not root.exists():
        if not root.parent.is_dir():
            raise UserError(
                f"data_dir={root} does not exist, nor does its parent {root.parent}; "
                "fix the path or create it first"
            )
        try:
            root.mkdir()
        except OSError as err:
            raise UserError(f"data_dir={root} cannot be created ({err.strerror})") from None
    if not root.is_dir():
        raise UserError(f"data_dir={root} is not a directory")
    if not os.access(root, os.W_OK | os.X_OK):
        raise UserError(
            f"data_dir={root} is not writable; datasets and feature classifiers are stored "
            "there: choose another data_dir"
        )
    return root


def check_idx(path: Path) -> None:
    """Refuses an IDX file whose size does not match its header (truncated or corrupted)."""
    with path.open("rb") as f:
        header = f.read(4)
        if len(header) < 4 or header[:2] != b"\0\0" or header[2] != 0x08 or not 1 <= header[3] <= 4:
            raise UserError(
                f"{path} is not an IDX file of bytes (bad header); it is corrupted: delete it "
                "and run again to fetch it anew"
            )
        dims = [int.from_bytes(f.read(4), "big") for _ in range(header[3])]
    expected = 4 + 4 * len(dims) + math.prod(dims)
    actual = path.stat().st_size
    if actual != expected:
        raise UserError(
            f"{path} is truncated or corrupted ({actual:,} bytes, its header promises "
            f"{expected:,}): delete it and run again to fetch it anew"
        )


def _digits(train: bool) -> Split:
    table = digits_table()
    # A fixed shuffle before splitting: the file is ordered by writer, so its tail alone would
    # test on writers never seen in training.
    order = np.random.default_rng(0).permutation(len(table))
    table = table[order[:-DIGITS_TEST_SIZE] if train else order[-DIGITS_TEST_SIZE:]]
    images = torch.from_numpy(table[:, :64]).reshape(-1, 1, 8, 8) / 8.0 - 1.0
    return Split(images.contiguous(), torch.from_numpy(table[:, 64]).long())


@functools.cache
def digits_table() -> np.ndarray:
    """scikit-learn's bundled digits, (1797, 65) float32: 64 pixels 0..16, then the label (small
    integers, exact in float32). Shared by the process, so read-only: copy before changing it."""
    bundled = bundled_digits_file()
    if bundled is not None:  # parsed as load_digits parses it, without importing scikit-learn
        table = np.loadtxt(bundled, delimiter=",", dtype=np.float32)
    else:  # a release that keeps the file elsewhere: its public loader of the same copy
        try:
            from sklearn.datasets import load_digits
        except ImportError as err:
            raise UserError(f"dataset=digits needs a working scikit-learn ({err})") from None
        bunch = load_digits()
        table = np.column_stack([bunch.data, bunch.target]).astype(np.float32)
    table.flags.writeable = False
    return table


def bundled_digits_file() -> Path | None:
    """The digits file scikit-learn ships and ``load_digits`` reads, if it is where scikit-learn
    keeps it; found without importing scikit-learn, whose import would dominate a run's start."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("dataset=digits needs scikit-learn: pip install scikit-learn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    return path if path.is_file() else None


def _unpack_offline_fashion(offline_dir: Path, raw_dir: Path) -> None:
    """Gunzips Debian's Fashion-MNIST files into torchvision's raw folder (their md5 differ from
    torchvision's list, so torchvision's own download check cannot take them)."""
    sources = [offline_dir / f"{stem}.gz" for stem in FASHION_FILES]
    if not all(p.is_file() for p in sources) or all((raw_dir / s).is_file() for s in FASHION_FILES):
        return
    raw_dir.mkdir(parents=True, exist_ok=True)
    for source, stem in zip(sources, FASHION_FILES):
        target = raw_dir / stem
        if target.is_file():
            continue
        with gzip.open(source, "rb") as src, atomic_file(target) as dst:  # never half-written
            shutil.copyfileobj(src, dst)


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # torchvision's downloader (urllib) sets no timeout of its own: bound every socket operation.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def download_cause(err: BaseException) -> str:
    """What went wrong in one line. torchvision's message is a header ("Error downloading
    NAME:") and then, per mirror, "Tried URL, got:" and the error: the errors are the cause."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    head = lines[0].rstrip(":")
    causes = [x for x in lines[1:] if not (x.startswith("Tried ") and x.endswith("got:"))]
    return f"{head}: {'; '.join(dict.fromkeys(causes))}" if causes else head


def _torchvision(name: str, root: Path, train: bool, timeout: float) -> Split:
    from torchvision import datasets  # imported here: slow to import, and digits needs none

    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}[name]
    raw_dir = root / cls.__name__ / "raw"
    for stem in FASHION_FILES:  # MNIST's raw files carry the same names
        if (raw_dir / stem).is_file():
            check_idx(raw_dir / stem)
    try:
        dataset = cls(str(root), train=train, download=False)
    except RuntimeError:  # not there yet: download once
        before = set(raw_dir.glob("*")) if raw_dir.is_dir() else set()
        try:
            with _socket_timeout(timeout):
                dataset = cls(str(root), train=train, download=True)
        except (OSError, RuntimeError) as err:
            after = set(raw_dir.glob("*")) if raw_dir.is_dir() else set()
            for leftover in after - before:
                leftover.unlink(missing_ok=True)  # a partial file must not pass for the dataset
            raise UserError(
                f"could not download {cls.__name__} into {raw_dir} ({download_cause(err)}). "
                f"Run again with network access, or place its IDX files in {raw_dir}. "
                f"{OFFLINE_ROUTES}"
            ) from None
    except (ValueError, AssertionError, OSError) as err:
        raise UserError(
            f"could not read {cls.__name__} from {raw_dir} ({err}); a file there may be truncated "
            "or corrupted: delete it and run again to fetch it anew"
        ) from None
    images = dataset.data.unsqueeze(1).float().div_(127.5).sub_(1.0)  # uint8 0..255 → [-1, 1]
    return Split(images, dataset.targets.long())
