"""Datasets load as normalized in-memory tensors, offline routes work, downloads cannot hang."""

from __future__ import annotations

import gzip
import socket
import struct
import threading
import time

import pytest
import torch

from conftest import data_source
from gan import data
from gan.errors import UserError


def test_digits_is_offline_normalized_and_split():
    digits = data_source("digits")
    train, test = data.load(digits, train=True), data.load(digits, train=False)
    assert train.images.shape == (1437, 1, 8, 8) and test.images.shape == (360, 1, 8, 8)
    assert train.images.dtype == torch.float32
    assert train.images.min() == -1 and train.images.max() == 1
    assert set(train.labels.tolist()) == set(range(10))


def write_idx(path, array: torch.Tensor, magic: int) -> None:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.to(torch.uint8).numpy().tobytes())


def test_digits_are_scikit_learns_own_read_without_importing_it():
    import numpy as np
    from sklearn.datasets import load_digits

    # Found where scikit-learn keeps it: else every run would import scikit-learn to load it.
    assert data.bundled_digits_file() is not None
    bunch = load_digits()
    want = np.column_stack([bunch.data, bunch.target])
    np.testing.assert_array_equal(data.digits_table(), want)
    assert not data.digits_table().flags.writeable  # cached for the process: nobody edits it


def test_fashion_mnist_unpacks_debians_files_offline(tmp_path):
    offline = tmp_path / "debian"
    offline.mkdir()
    images = torch.arange(5 * 28 * 28).reshape(5, 28, 28) % 256
    for prefix in ("train", "t10k"):
        write_idx(offline / f"{prefix}-images-idx3-ubyte.gz", images, 0x803)
        write_idx(offline / f"{prefix}-labels-idx1-ubyte.gz", torch.arange(5), 0x801)
    split = data.load(
        data_source("fashion_mnist", tmp_path / "data", offline_dir=offline), train=True
    )
    assert split.images.shape == (5, 1, 28, 28)
    assert split.images[0, 0, 0, 1].item() == pytest.approx(1 / 127.5 - 1)
    assert split.labels.tolist() == [0, 1, 2, 3, 4]
    assert not list((tmp_path / "data").rglob("*.partial"))  # no temporary file left


@pytest.fixture
def silent_server():
    """A loopback server that accepts connections and never answers: a hung mirror."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_a_hung_download_times_out_with_the_offline_routes(silent_server, tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    monkeypatch.setattr(MNIST, "mirrors", [silent_server])
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        data.load(data_source("mnist", tmp_path, download_timeout=0.5), train=True)
    assert time.monotonic() - start < 20  # 4 files × 0.5 s, not forever
    message = str(err.value)
    assert "could not download MNIST" in message and "dataset=digits" in message
    assert "dataset-fashion-mnist" in message
    raw = tmp_path / "MNIST" / "raw"
    assert not raw.exists() or not any(raw.iterdir())  # nothing half-downloaded left behind
