"""Train the bundled robust model ``mnist-cnn-pgd`` with PGD adversarial training (Madry et al.).

Usage (from the repository root, with mlsec installed)::

    python scripts/train_mnist_robust.py    # -> mlsec/zoo/weights/mnist_cnn_pgd.safetensors

The CNN of ``mnist-cnn`` (``mlsec.zoo.architectures.mnist_cnn``) is trained with
:class:`mlsec.defenses.PGDAdversarialTraining` on MNIST test images 0-7999 (the bundled 2,000 are
held out) against PGD-10 at linf eps 0.3 (step 2.5 * eps / 10, random start, last iterate), eps
ramped up linearly over the first 2 epochs so the network does not stall at chance; SGD with
momentum 0.9 at learning rate 0.05 on a cosine schedule, 15 epochs, batch 128, seed 0. The last
epoch's weights are kept (nothing is selected on the held-out images). Each epoch prints clean and
PGD-20 accuracy on 500 held-out images; the end prints the full check on all 2,000: clean accuracy
and PGD-40 (eps 0.3, step 0.01, 5 restarts). The run folder (``--run``) holds the log and a
checkpoint per epoch; ``--resume`` continues it.

The recipe matters more than the width: with Adam (``--optimizer adam --lr 1e-3 --batch-size 64
--eps-ramp 3``) the same network plateaus at 79.3% PGD-40 x 5 accuracy, and the wider
``mnist_cnn_wide`` (the same with ``--arch wide``) at 83.9%; with SGD as above the small network
reaches about 89%.

Reference: A. Madry, A. Makelov, L. Schmidt, D. Tsipras, A. Vladu. Towards Deep Learning Models
Resistant to Adversarial Attacks. ICLR 2018. arXiv:1706.06083.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from mnist_source import DEFAULT_DIR, training_split

from mlsec.attacks import PGD
from mlsec.datasets import mnist_sample
from mlsec.defenses import PGDAdversarialTraining, TrainConfig
from mlsec.defenses.training import save_weights
from mlsec.zoo import architectures

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "mlsec" / "zoo" / "weights" / "mnist_cnn_pgd.safetensors"


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return sum(
        int((model(xb).argmax(1) == yb).sum())
        for xb, yb in zip(x.split(500), y.split(500), strict=True)
    ) / len(y)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--mnist-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--eps-ramp", type=int, default=2, help="epochs over which eps grows")
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default="sgd")
    parser.add_argument("--arch", choices=["wide", "small"], default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--run", type=Path, default=ROOT / "out" / "mnist-cnn-pgd")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    torch.use_deterministic_algorithms(True, warn_only=True)
    x_train, y_train = training_split(args.mnist_dir)
    x_test, y_test = mnist_sample()

    torch.manual_seed(args.seed)
    build = architectures.mnist_cnn_wide if args.arch == "wide" else architectures.mnist_cnn
    model = build().to(args.device)
    method = PGDAdversarialTraining(eps=args.eps, steps=args.steps)
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        schedule="cosine",
        eps_ramp=args.eps_ramp,
        seed=args.seed,
        eval_steps=20,
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
    model = model.cpu().eval()
    save_weights(
        model,
        args.out,
        metadata={"method": "pgd-at", "eps": str(args.eps), "seed": str(args.seed)},
    )
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes); training took {seconds:.0f} s")
    final = PGD(eps=args.eps, steps=40, step_size=0.01, restarts=5)
    x_adv = torch.cat(
        [final(model, xb, yb) for xb, yb in zip(x_test.split(500), y_test.split(500), strict=True)]
    )
    print(
        f"all 2000 held-out: clean {accuracy(model, x_test, y_test):.4f}  "
        f"PGD-40 x 5 restarts (step 0.01) {accuracy(model, x_adv, y_test):.4f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
