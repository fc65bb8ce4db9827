"""Build ``mlsec/_data/mnist_sample.npz``: MNIST test images 8000-9999 as compressed uint8.

Usage: ``python scripts/build_mnist_sample.py [--mnist-dir ../shared/data/mnist]``.
The MD5 of both decompressed source files is verified before anything is written.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
from mnist_source import DEFAULT_DIR, load_mnist_test

OUT = Path(__file__).resolve().parents[1] / "mlsec" / "_data" / "mnist_sample.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mnist-dir", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args()
    images, labels = load_mnist_test(args.mnist_dir)
    x, y = images[8000:10000].copy(), labels[8000:10000].copy()
    np.savez_compressed(OUT, x=x, y=y)
    digest = hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes); sha256 of x||y: {digest}")


if __name__ == "__main__":
    main()
