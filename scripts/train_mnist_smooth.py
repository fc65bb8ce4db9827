"""Train the bundled ``mnist-cnn-smooth``: the base model of a randomized-smoothing classifier.

Usage (from the repository root, with mlsec installed)::

    python scripts/train_mnist_smooth.py             # writes mnist_cnn_smooth.safetensors
    python scripts/train_mnist_smooth.py --certify   # then certifies 500 held-out images

The CNN of ``mnist-cnn`` (``mlsec.zoo.architectures.mnist_cnn``) starts from the bundled
``mnist-cnn`` weights (``--from-scratch`` starts from a seeded random initialisation instead) and
is trained with :class:`~mlsec.defenses.training.gaussian.GaussianTraining` (Gaussian data
augmentation, Cohen et al. 2019) at sigma 0.25 on MNIST test images 0-7999 (the bundled 2,000 are
held out): Adam at learning rate 1e-3 on a cosine schedule, batch 128, seed 0. The last epoch's
weights are kept (nothing is selected on the held-out images); each epoch prints the base model's
clean and PGD-10 (l2 eps 0.5) accuracy on 500 held-out images, which only monitors the run.

``--certify`` then runs CERTIFY (:class:`~mlsec.defenses.certified.smoothing.Smoothing`, sigma
0.25, n0 = 100, n = 10,000, alpha = 0.001, seed 0) on the first ``--certify-count`` held-out
images and prints the certified accuracy at l2 radii 0, 0.25, 0.5, 0.75 and 1.0 and the time per
image.

Reference: J. Cohen, E. Rosenfeld, J. Z. Kolter. Certified Adversarial Robustness via Randomized
Smoothing. ICML 2019. arXiv:1902.02918.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from mnist_source import DEFAULT_DIR, training_split
from safetensors.torch import load as load_safetensors

import mlsec
from mlsec.datasets import mnist_sample
from mlsec.defenses import TrainConfig
from mlsec.defenses.certified.smoothing import Smoothing
from mlsec.defenses.training import save_weights
from mlsec.defenses.training.gaussian import GaussianTraining
from mlsec.zoo import architectures

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "mlsec" / "zoo" / "weights" / "mnist_cnn_smooth.safetensors"
RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def certify(model: torch.nn.Module, sigma: float, count: int, n: int, device: str) -> None:
    """Print the smoothed classifier's certified accuracy per radius and the time per image."""
    x, y = mnist_sample()
    x, y = x[:count].to(device), y[:count].to(device)
    smoothing = Smoothing(sigma=sigma, n0=100, n=n, alpha=0.001, batch_size=1_000, seed=0)
    start, cpu = time.perf_counter(), time.process_time()
    parts = [
        smoothing.certify(model, xb, index=torch.arange(s, s + len(xb), device=device))
        for s, xb in zip(range(0, count, 50), x.split(50), strict=True)
    ]
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    prediction = torch.cat([p.prediction for p in parts]).cpu()
    radius = torch.cat([p.radius for p in parts]).cpu()
    y = y.cpu()
    line = "  ".join(
        f"r={r:g}: {float(((prediction == y) & (radius >= r)).float().mean()):.4f}" for r in RADII
    )
    print(f"certified accuracy on the first {count} held-out images (n={n}): {line}")
    print(
        f"abstained {int((prediction < 0).sum())}; {wall / count:.3f} s wall, "
        f"{cpu / count:.3f} s CPU per image on {device} ({torch.get_num_threads()} threads)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--mnist-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--from-scratch", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--run", type=Path, default=ROOT / "out" / "mnist-cnn-smooth")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--skip-training", action="store_true", help="certify --out as it is")
    parser.add_argument("--certify", action="store_true")
    parser.add_argument("--certify-count", type=int, default=500)
    parser.add_argument("--certify-n", type=int, default=10_000)
    args = parser.parse_args()

    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(args.seed)
    model = architectures.mnist_cnn()
    if args.skip_training:
        model.load_state_dict(load_safetensors(args.out.read_bytes()))
    else:
        if not args.from_scratch:
            model.load_state_dict(mlsec.zoo.load("mnist-cnn").state_dict())
        train(model.to(args.device), args)
    if args.certify:
        certify(
            model.to(args.device).eval(),
            args.sigma,
            args.certify_count,
            args.certify_n,
            args.device,
        )


def train(model: torch.nn.Module, args: argparse.Namespace) -> None:
    """Gaussian data augmentation on images 0-7999; writes ``args.out``."""
    x_train, y_train = training_split(args.mnist_dir)
    x_test, y_test = mnist_sample()
    method = GaussianTraining(sigma=args.sigma, eps=0.5, norm="l2")
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer="adam",
        lr=args.lr,
        schedule="cosine",
        seed=args.seed,
        eval_steps=10,
        eval_size=500,
    )
    start = time.perf_counter()
    method.fit(
        (x_train, y_train),
        model=model,
        config=config,
        held_out=(x_test, y_test),
        folder=args.run,
        resume=args.resume,
        progress=True,
    )
    seconds = time.perf_counter() - start
    save_weights(
        model.cpu().eval(),
        args.out,
        metadata={
            "method": "gaussian",
            "sigma": str(args.sigma),
            "seed": str(args.seed),
            "init": "random" if args.from_scratch else "mnist-cnn",
        },
    )
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes); training took {seconds:.0f} s")


if __name__ == "__main__":
    main()
