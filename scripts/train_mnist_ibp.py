"""Train the bundled verifiably robust model ``mnist-cnn-ibp`` with IBP training (Gowal et al.).

Usage (from the repository root, with mlsec installed)::

    OMP_NUM_THREADS=1 python scripts/train_mnist_ibp.py
    # -> mlsec/zoo/weights/mnist_cnn_ibp.safetensors

The network (:func:`mnist_cnn_ibp`, Gowal et al.'s "small" model: two strided convolutions and
two linear layers, no pooling, so ART's ``PyTorchIBPClassifier`` can bound it too) is trained on
MNIST test images 0-7999 (the bundled 2,000 are held out), seeded, with deterministic kernels:

1. a warm-up of clean epochs (:class:`mlsec.defenses.StandardTraining`), then
2. IBP training (:class:`mlsec.defenses.training.ibp.IBPTraining`) at eps 0.1 with the bounds
   trained at ``--train-eps-factor`` times eps, eps ramped linearly per step over the first
   ``--eps-ramp`` epochs and kappa (the clean loss's weight) ramped alongside from 1 to
   ``--kappa``; Adam on a cosine schedule.

The defaults: 2 warm-up epochs, then 50 IBP epochs at batch 50, Adam at 1e-3, eps 0.1 with the
bounds trained at 4 x eps = 0.4 (the paper trains at 0.4 for its eps-0.3 results), eps and kappa
ramped over the first 20 IBP epochs, final kappa 0.5, seed 0 (about 5 minutes on one CPU thread).
The last epoch's weights are kept (nothing is selected on the held-out images). The end prints,
on the first 500 held-out images: clean accuracy, IBP-verified accuracy at linf eps 0.1, 0.2 and
0.3, and PGD-40 accuracy at 0.1 and 0.3, which must not fall below the verified accuracy.

Measured with the defaults: clean 96.4%, IBP-verified 94.4% at 0.1, 89.6% at 0.2, 80.8% at 0.3;
PGD-40 95.0% at 0.1 and 87.6% at 0.3. Training the bounds at 0.2 instead (``--train-eps-factor 2
--epochs 40 --eps-ramp 15``) gives more clean accuracy (97.8%) and the same at 0.1 (94.6%), but
nothing verified at 0.3 (0%).

Reference: S. Gowal, K. Dvijotham, R. Stanforth, R. Bunel, C. Qin, J. Uesato, R. Arandjelovic,
T. Mann, P. Kohli. On the Effectiveness of Interval Bound Propagation for Training Verifiably
Robust Models. arXiv:1810.12715, 2018.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from mnist_source import DEFAULT_DIR, training_split
from torch import nn

from mlsec.attacks import PGD
from mlsec.datasets import mnist_sample
from mlsec.defenses import StandardTraining, TrainConfig
from mlsec.defenses.certified.intervals import verified
from mlsec.defenses.training import save_weights
from mlsec.defenses.training.ibp import IBPTraining
from mlsec.zoo.architectures import mnist_cnn_ibp

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "mlsec" / "zoo" / "weights" / "mnist_cnn_ibp.safetensors"


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return int((model(x).argmax(1) == y).sum()) / len(y)


def report(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Clean, IBP-verified and PGD-40 accuracy on ``x, y``."""
    print(f"held-out {len(y)}: clean {accuracy(model, x, y):.4f}", flush=True)
    for eps in (0.1, 0.2, 0.3):
        fraction = float(verified(model, x, y, eps).float().mean())
        print(f"  IBP-verified at linf eps {eps}: {fraction:.4f}")
    for eps in (0.1, 0.3):
        x_adv = PGD(eps=eps, steps=40, step_size=eps / 10, seed=0)(model, x, y)
        print(
            f"  PGD-40 (step eps/10) at linf eps {eps}: {accuracy(model, x_adv, y):.4f}", flush=True
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--mnist-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=2, help="clean epochs first")
    parser.add_argument("--epochs", type=int, default=50, help="IBP epochs after the warm-up")
    parser.add_argument("--eps-ramp", type=int, default=20, help="epochs over which eps grows")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--train-eps-factor", type=float, default=4.0)
    parser.add_argument("--kappa", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    torch.use_deterministic_algorithms(True, warn_only=True)
    x_train, y_train = training_split(args.mnist_dir)
    x_test, y_test = mnist_sample()
    x_test, y_test = x_test[:500], y_test[:500]

    torch.manual_seed(args.seed)
    model = mnist_cnn_ibp().to(args.device)
    common = {"batch_size": args.batch_size, "seed": args.seed, "eval_steps": 10, "eval_size": 500}
    start = time.perf_counter()
    if args.warmup:
        StandardTraining(eps=args.eps).fit(
            (x_train, y_train),
            model=model,
            config=TrainConfig(epochs=args.warmup, lr=args.lr, schedule="constant", **common),
            progress=True,
        )
    method = IBPTraining(eps=args.eps, kappa=args.kappa, train_eps_factor=args.train_eps_factor)
    config = TrainConfig(
        epochs=args.epochs, lr=args.lr, schedule="cosine", eps_ramp=args.eps_ramp, **common
    )
    method.fit(
        (x_train, y_train), model=model, config=config, held_out=(x_test, y_test), progress=True
    )
    seconds = time.perf_counter() - start
    model = model.cpu().eval()
    metadata = {
        "method": "ibp",
        "eps": str(args.eps),
        "train_eps_factor": str(args.train_eps_factor),
        "kappa": str(args.kappa),
        "seed": str(args.seed),
    }
    save_weights(model, args.out, metadata=metadata)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes); training took {seconds:.0f} s")
    report(model, x_test, y_test)


if __name__ == "__main__":
    main()
