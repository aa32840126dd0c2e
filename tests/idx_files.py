"""Tiny MNIST-format IDX files for tests: the real format, read by torchvision's real reader.

Images are learnable: a class-k image has row 2k+2 lit, plus seeded noise, so a model can
fit them in an epoch or two.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: magic 0x0000 08 <ndim>, big-endian dims, raw bytes."""
    assert array.dtype == np.uint8
    return struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    images[np.arange(n), 2 * labels.astype(int) + 2, :] = 255
    return images, labels


def write_mnist(folder: Path, n_train: int = 60, n_test: int = 20, gz: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    """Write the four files (gzip'd or plain) into `folder`; returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    x, y = make_images(n_train, seed)
    x_test, y_test = make_images(n_test, seed + 1)
    arrays = dict(zip(FILES, (x, y, x_test, y_test), strict=True))
    for name, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays
