"""Train the bundled robust MNIST model with PGD adversarial training (Madry et al. 2018).

Usage (from the repository root, with mlsec installed)::

    python scripts/train_mnist_robust.py        # -> mlsec/zoo/weights/mnist_cnn_pgd.safetensors

The small CNN of ``mnist-cnn`` is trained on MNIST test images 0-7999 (the bundled 2,000 are held
out) against PGD-10 at linf eps 0.3 (step 2.5 * eps / 10, random start, the last iterate: the
highest-loss point, as in Madry et al.), with eps ramped up linearly over the first epochs so the
small network does not stall at chance. Seeded; deterministic kernels. Each epoch prints clean and
PGD-20 accuracy on 500 held-out images; the end prints the full check on all 2,000: clean
accuracy and PGD-40 (eps 0.3, step 0.01, 5 restarts).

Status: groundwork for the bundled robust model (issue "Adversarial training for research"); the
weights are not registered in the zoo yet. Measured on a 2-core CPU, seed 0, all 2,000 held-out
images, PGD-40 (eps 0.3, step 0.01, 5 restarts):

    python scripts/train_mnist_robust.py              273 s  clean 97.75%  PGD-40x5 79.30%
    python scripts/train_mnist_robust.py --steps 20   451 s  clean 97.65%  PGD-40x5 79.00%

Both plateau from epoch 9 on (PGD-20 on 500 held-out images: 74-75%), so the stronger inner
attack does not help: the small network (16 and 32 filters, 100 hidden units) is the limit, just
under the 80% the bundled robust model must reach. A wider network is the next thing to try.

Reference: A. Madry, A. Makelov, L. Schmidt, D. Tsipras, A. Vladu. Towards Deep Learning Models
Resistant to Adversarial Attacks. ICLR 2018. arXiv:1706.06083.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from mnist_source import DEFAULT_DIR, load_mnist_test
from safetensors.torch import save_file
from torch import nn

from mlsec.attacks import PGD
from mlsec.datasets import mnist_sample
from mlsec.zoo import architectures

OUT = (
    Path(__file__).resolve().parents[1] / "mlsec" / "zoo" / "weights" / "mnist_cnn_pgd.safetensors"
)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


def robust_accuracy(model: nn.Module, attack: PGD, x: torch.Tensor, y: torch.Tensor) -> float:
    x_adv = attack(model, x, y)
    return accuracy(model, x_adv, y)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--mnist-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument(
        "--ramp-epochs", type=int, default=3, help="epochs over which eps grows to 0.3"
    )
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    images, labels = load_mnist_test(args.mnist_dir)
    x_train = torch.from_numpy(images[:8000].astype("float32") / 255.0).unsqueeze(1)
    y_train = torch.from_numpy(labels[:8000].astype("int64"))
    x_test, y_test = mnist_sample()
    monitor = PGD(eps=args.eps, steps=20, seed=1)

    model = architectures.mnist_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    batches = -(-len(x_train) // args.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * batches)
    generator = torch.Generator().manual_seed(args.seed)
    ramp = max(1, args.ramp_epochs * batches)
    step_number = 0
    start = time.perf_counter()
    for epoch in range(args.epochs):
        order = torch.randperm(len(x_train), generator=generator)
        for batch in order.split(args.batch_size):
            eps = args.eps * min(1.0, (step_number + 1) / ramp)
            inner = PGD(
                eps=eps, steps=args.steps, random_start=True, last_iterate=True, seed=step_number
            )
            model.train()
            x_adv = inner(model, x_train[batch], y_train[batch])
            loss = F.cross_entropy(model(x_adv), y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step_number += 1
        held_x, held_y = x_test[:500], y_test[:500]
        print(
            f"epoch {epoch + 1:2d}/{args.epochs}  eps {eps:.3f}  "
            f"held-out clean {accuracy(model, held_x, held_y):.4f}  "
            f"PGD-20 {robust_accuracy(model, monitor, held_x, held_y):.4f}  "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    model.eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(
        state, args.out, metadata={"method": "pgd-at", "eps": str(args.eps), "seed": str(args.seed)}
    )
    print(
        f"wrote {args.out} ({args.out.stat().st_size} bytes), {time.perf_counter() - start:.0f} s"
    )
    final = PGD(eps=args.eps, steps=40, step_size=0.01, restarts=5)
    print(
        f"all 2000 held-out: clean {accuracy(model, x_test, y_test):.4f}  "
        f"PGD-40 x 5 restarts (step 0.01) {robust_accuracy(model, final, x_test, y_test):.4f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
