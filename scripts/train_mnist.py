"""Train a bundled MNIST model on MNIST test images 0-7999 and write its safetensors weights.

Usage (from the repository root, with mlsec installed)::

    python scripts/train_mnist.py --arch cnn       # -> mlsec/zoo/weights/mnist_cnn.safetensors
    python scripts/train_mnist.py --arch softmax   # -> mlsec/zoo/weights/mnist_softmax.safetensors

The run is seeded (``--seed``, default 0) and uses deterministic kernels, so on the same machine
and PyTorch version it reproduces the bundled weights. It prints the accuracy on the held-out
bundled sample (images 8000-9999) after each epoch.
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

from mlsec.datasets import mnist_sample
from mlsec.zoo import architectures

WEIGHTS = Path(__file__).resolve().parents[1] / "mlsec" / "zoo" / "weights"
RECIPES = {
    # arch: (builder, epochs, learning rate, random-shift augmentation in pixels)
    "cnn": (architectures.mnist_cnn, 15, 1e-3, 2),
    "softmax": (architectures.mnist_softmax, 30, 1e-2, 0),
}


def random_shift(x: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``pixels`` in each direction (zero padding)."""
    if pixels == 0:
        return x
    padded = F.pad(x, (pixels,) * 4)
    size = x.shape[-1]
    shifts = torch.randint(0, 2 * pixels + 1, (x.shape[0], 2), generator=generator)
    return torch.stack(
        [padded[i, :, dy : dy + size, dx : dx + size] for i, (dy, dx) in enumerate(shifts.tolist())]
    )


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--arch", choices=sorted(RECIPES), required=True)
    parser.add_argument("--mnist-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    build, epochs, lr, shift = RECIPES[args.arch]
    epochs = args.epochs or epochs

    x_train, y_train = training_split(args.mnist_dir)
    x_test, y_test = mnist_sample()

    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for batch in order.split(args.batch_size):
            xb = random_shift(x_train[batch], shift, generator)
            loss = F.cross_entropy(model(xb), y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        schedule.step()
        print(
            f"epoch {epoch + 1:2d}/{epochs}  train acc {accuracy(model, x_train, y_train):.4f}  "
            f"held-out acc {accuracy(model, x_test, y_test):.4f}  "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    path = WEIGHTS / f"mnist_{args.arch}.safetensors"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(
        state, path, metadata={"arch": args.arch, "seed": str(args.seed), "epochs": str(epochs)}
    )
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
