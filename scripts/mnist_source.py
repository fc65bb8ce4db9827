"""Read the MNIST test set in its original IDX format and verify it.

Shared by the scripts that build the bundled sample and train the bundled models. The files are
the ones in ``../shared/data/mnist`` (Y. LeCun, C. Cortes, C. J. C. Burges; CC BY-SA 3.0).
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
IMAGES_MD5 = "2646ac647ad5339dbf082846283269ea"
LABELS_MD5 = "27ae3e4e09519cfbb04c329615203637"


def _read(path: Path, md5: str, header: int) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    digest = hashlib.md5(raw).hexdigest()
    if digest != md5:
        raise SystemExit(f"{path}: MD5 of the decompressed file is {digest}, expected {md5}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header)


def load_mnist_test(directory: Path = DEFAULT_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Return the 10,000 test images as uint8 [10000, 28, 28] and labels as uint8 [10000]."""
    images = _read(directory / "t10k-images-idx3-ubyte.gz", IMAGES_MD5, 16).reshape(-1, 28, 28)
    labels = _read(directory / "t10k-labels-idx1-ubyte.gz", LABELS_MD5, 8)
    return images, labels
