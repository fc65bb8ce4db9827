"""Train the bundled APE-GAN purifier ``mnist-ape-gan`` on MNIST test images 0-7999 (seeded).

Usage (from the repository root, with mlsec installed)::

    python scripts/train_ape_gan.py       # -> mlsec/zoo/weights/mnist_ape_gan.safetensors

:class:`mlsec.defenses.APEGAN` with its defaults (the paper's loss weights 0.7 reconstruction /
0.3 adversarial, Adam 2e-4), trained on FGSM examples at linf eps 0.3 made on the fly against the
bundled standard CNN ``mnist-cnn`` (the classifier it protects), 10 epochs, batch 64, seed 0. The
run folder (``--run``) gets a checkpoint, a log line and a sample grid (clean / FGSM / purified)
per epoch; ``--resume`` continues it. The end prints clean and FGSM accuracy of ``mnist-cnn``
behind the purifier on 500 held-out images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mnist_source import DEFAULT_DIR, check_purifier, training_split

from mlsec import zoo
from mlsec.defenses import APEGAN

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "mlsec" / "zoo" / "weights" / "mnist_ape_gan.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--run", type=Path, default=ROOT / "out" / "ape-gan")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    x, y = training_split(args.mnist_dir)
    defense = APEGAN(seed=0).fit(
        (x, y),
        model=zoo.load("mnist-cnn"),
        epochs=args.epochs,
        folder=str(args.run),
        resume=args.resume,
        device=args.device,
        progress=True,
    )
    defense.save(args.out)
    check_purifier(defense, args.out)


if __name__ == "__main__":
    main()
