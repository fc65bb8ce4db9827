"""Build the bundled MNIST data: images 8000-9999 (the held-out sample) and 0-7999 (the members).

``mlsec/_data/mnist_sample.npz`` holds test images 8000-9999, ``mlsec/_data/mnist_members.npz``
images 0-7999 (what the bundled models were trained on, for the privacy audit), both as
compressed uint8.

Usage: ``python scripts/build_mnist_sample.py [--mnist-dir ../shared/data/mnist]``.
The MD5 of both decompressed source files is verified before anything is written.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
from mnist_source import DEFAULT_DIR, load_mnist_test

DATA = Path(__file__).resolve().parents[1] / "mlsec" / "_data"
PARTS = {"mnist_sample.npz": (8000, 10000), "mnist_members.npz": (0, 8000)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mnist-dir", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args()
    images, labels = load_mnist_test(args.mnist_dir)
    for name, (start, stop) in PARTS.items():
        x, y = images[start:stop].copy(), labels[start:stop].copy()
        out = DATA / name
        np.savez_compressed(out, x=x, y=y)
        digest = hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()
        print(f"wrote {out} ({out.stat().st_size} bytes); sha256 of x||y: {digest}")


if __name__ == "__main__":
    main()
