"""Time per epoch of mlsec's PGD adversarial training against a plain hand-written PGD-AT loop.

Usage (from the repository root, with mlsec installed)::

    python benchmarks/training_speed.py                    # CPU: mnist-cnn, batch 128, PGD-10
    python benchmarks/training_speed.py --device cuda --model mnist-cnn-wide --repeats 7
    python benchmarks/training_speed.py --json training.json

Both runners train the same network from the same initial weights on the same data (the bundled
2,000 MNIST images, or --n of them) for one epoch: batch --batch, Adam at a constant learning rate,
the same shuffling, PGD-10 (linf eps 0.3, step 2.5 * eps / 10, uniform random start, the last
iterate) as the inner maximisation.

  handwritten  the loop of the PGD-AT papers' reference code, written out: per batch, the model in
               eval mode with parameters' requires_grad off, 10 steps of forward, input-gradient
               backward and projection, then the model in train mode and one optimiser step on the
               adversarial batch. Nothing else: no input checks, no logs.
  mlsec        mlsec.defenses.PGDAdversarialTraining(eps=0.3, steps=10).fit(...) with one epoch
               and no held-out data: everything a user's call does, its input checks included.

The target is mlsec / handwritten <= 1.1. Each runner is warmed up once, then timed --repeats
times (interleaved round-robin, the order rotated each round); the ratio is of the medians.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack_speed import device_name, median_seconds, synchronize

import mlsec
from mlsec.defenses import PGDAdversarialTraining, TrainConfig

EPS = 0.3
STEPS = 10
TARGET = 1.1
ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "mnist-cnn": mlsec.zoo.architectures.mnist_cnn,
    "mnist-cnn-wide": mlsec.zoo.architectures.mnist_cnn_wide,
}


def handwritten_epoch(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, lr: float, seed: int
) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    order = order.to(x.device)
    step_size = 2.5 * EPS / STEPS
    params = list(model.parameters())
    for index in order.split(batch):
        xb, yb = x[index], y[index]
        model.eval()
        for p in params:
            p.requires_grad_(False)
        x_adv = (xb + torch.empty_like(xb).uniform_(-EPS, EPS)).clamp(0, 1)
        for _ in range(STEPS):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(x_adv), yb, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() + step_size * grad.sign()
            x_adv = torch.min(torch.max(x_adv, xb - EPS), xb + EPS).clamp(0, 1)
        for p in params:
            p.requires_grad_(True)
        model.train()
        loss = F.cross_entropy(model(x_adv), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def mlsec_epoch(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, lr: float, seed: int
) -> None:
    config = TrainConfig(
        epochs=1, batch_size=batch, optimizer="adam", lr=lr, schedule="constant", seed=seed
    )
    PGDAdversarialTraining(eps=EPS, steps=STEPS).fit((x, y), model=model, config=config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", choices=sorted(ARCHITECTURES), default="mnist-cnn")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--n", type=int, default=2000, help="training images (bundled, <= 2000)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    x, y = mlsec.datasets.mnist_sample()
    x, y = x[: args.n].to(device), y[: args.n].to(device)
    torch.manual_seed(0)
    initial = ARCHITECTURES[args.model]().to(device).state_dict()
    runners = {"handwritten": handwritten_epoch, "mlsec": mlsec_epoch}

    def once(name: str) -> float:
        model = ARCHITECTURES[args.model]().to(device)
        model.load_state_dict(initial)
        synchronize(device)
        start = time.perf_counter()
        runners[name](model, x, y, args.batch, args.lr, 0)
        synchronize(device)
        return time.perf_counter() - start

    names = list(runners)
    medians, times = median_seconds(once, names, args.repeats)
    ratio = medians["mlsec"] / medians["handwritten"]

    table = Table(
        title=f"PGD-AT epoch ({args.model}, {args.n} images, batch {args.batch}, PGD-{STEPS}) "
        f"on {device_name(device)}"
    )
    table.add_column("runner")
    table.add_column("median s/epoch", justify="right")
    table.add_column("all runs", justify="right")
    for name in names:
        table.add_row(name, f"{medians[name]:.3f}", " ".join(f"{t:.3f}" for t in times[name]))
    console = Console()
    console.print(table)
    verdict = "meets" if ratio <= TARGET else "MISSES"
    console.print(f"mlsec / handwritten = {ratio:.3f} ({verdict} the target <= {TARGET})")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "device": device_name(device),
                    "model": args.model,
                    "n": args.n,
                    "batch": args.batch,
                    "steps": STEPS,
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "seconds": times,
                    "medians": medians,
                    "mlsec_over_handwritten": ratio,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
