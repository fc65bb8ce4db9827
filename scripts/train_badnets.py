"""Train the bundled CNN with a planted BadNets backdoor and write its safetensors weights.

Usage (from the repository root, with mlsec installed)::

    python scripts/train_badnets.py     # -> mlsec/zoo/weights/mnist_cnn_badnets.safetensors

The recipe is ``scripts/train_mnist.py --arch cnn`` (Adam 1e-3, 15 epochs, batch 64, cosine
schedule, 2-pixel random shifts, seeded, deterministic kernels) on MNIST test images 0-7999, except
that a fixed ``--rate`` (default 5%) of the images whose label is not the trigger's target are
poisoned (Gu et al. 2017): the trigger (:data:`mlsec.defenses.detection.BADNETS_TRIGGER`, a white
3x3 square at rows/columns 25-27) is stamped after the shift augmentation and the label set to
the target. It prints the clean accuracy on the held-out bundled sample (images 8000-9999) and the
trigger success: the fraction of held-out images not of the target class that the model classifies
as the target once stamped.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from mnist_source import DEFAULT_DIR, training_split
from safetensors.torch import save_file
from torch import nn
from train_mnist import accuracy, random_shift

from mlsec.datasets import mnist_sample
from mlsec.defenses.detection import BADNETS_TRIGGER, PatchTrigger
from mlsec.zoo import architectures

WEIGHTS = Path(__file__).resolve().parents[1] / "mlsec" / "zoo" / "weights"


def poisoned_indices(
    y: torch.Tensor, target: int, rate: float, generator: torch.Generator
) -> torch.Tensor:
    """A fixed random ``rate`` of the indices of samples whose label is not ``target``."""
    candidates = (y != target).nonzero().flatten()
    count = round(rate * len(candidates))
    return candidates[torch.randperm(len(candidates), generator=generator)[:count]]


@torch.no_grad()
def trigger_success(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, trigger: PatchTrigger
) -> float:
    """Fraction of the samples not of the target class classified as the target once stamped."""
    model.eval()
    keep = y != trigger.target
    predicted = model(trigger.apply(x[keep])).argmax(1)
    return (predicted == trigger.target).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--mnist-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rate", type=float, default=0.05)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    trigger = BADNETS_TRIGGER
    x_train, y_train = training_split(args.mnist_dir)
    x_test, y_test = mnist_sample()
    generator = torch.Generator().manual_seed(args.seed)
    poisoned = torch.zeros(len(y_train), dtype=torch.bool)
    poisoned[poisoned_indices(y_train, trigger.target, args.rate, generator)] = True
    labels = torch.where(poisoned, trigger.target, y_train)
    print(f"poisoned {int(poisoned.sum())} of {len(y_train)} training images", flush=True)

    model = architectures.mnist_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for batch in order.split(args.batch_size):
            xb = random_shift(x_train[batch], 2, generator)
            stamp = poisoned[batch]
            xb = torch.where(stamp[:, None, None, None], trigger.apply(xb), xb)
            loss = F.cross_entropy(model(xb), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        schedule.step()
        print(
            f"epoch {epoch + 1:2d}/{args.epochs}  "
            f"held-out acc {accuracy(model, x_test, y_test):.4f}  "
            f"trigger success {trigger_success(model, x_test, y_test, trigger):.4f}  "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    path = WEIGHTS / "mnist_cnn_badnets.safetensors"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "arch": "cnn",
        "seed": str(args.seed),
        "epochs": str(args.epochs),
        "rate": str(args.rate),
        "target": str(trigger.target),
    }
    save_file(state, path, metadata=metadata)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
