"""Read the MNIST test set in its original IDX format and verify it.

Shared by the scripts that build the bundled sample and train the bundled models. The files are
the ones in ``../shared/data/mnist`` (Y. LeCun, C. Cortes, C. J. C. Burges; CC BY-SA 3.0).
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

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


def training_split(directory: Path = DEFAULT_DIR) -> tuple[torch.Tensor, torch.Tensor]:
    """Images 0-7999 of the test set, the bundled models' training data: float32 [8000, 1, 28, 28]
    in [0, 1] and int64 labels [8000]. Images 8000-9999 (the bundled sample) stay held out."""
    images, labels = load_mnist_test(directory)
    x = torch.from_numpy(images[:8000].astype("float32") / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels[:8000].astype("int64"))


def check_purifier(defense: Any, out: Path, n: int = 500) -> None:
    """Print clean and non-adaptive FGSM (linf 0.3) accuracy of ``mnist-cnn`` behind ``defense``
    on the first ``n`` held-out images."""
    from mlsec import zoo
    from mlsec.attacks import FGSM
    from mlsec.datasets import mnist_sample

    model = zoo.load("mnist-cnn")
    x, y = mnist_sample()
    x, y = x[:n], y[:n]
    defended = defense.wrap(model).eval()
    with torch.no_grad():
        clean = float((defended(x).argmax(1) == y).float().mean())
    x_adv = FGSM(eps=0.3)(model, x, y)
    with torch.no_grad():
        fgsm = float((defended(x_adv).argmax(1) == y).float().mean())
    print(f"{out}: held-out {n}, clean {clean:.1%}, FGSM eps 0.3 (non-adaptive) {fgsm:.1%}")
