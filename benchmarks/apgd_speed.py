"""Wall-clock speed of mlsec's APGD-CE against its bound, ART's APGD and torchattacks' APGD.

Usage (from the repository root, with mlsec installed)::

    python benchmarks/apgd_speed.py                   # CPU: mnist-cnn-pgd, batch 500, 100 steps
    python benchmarks/apgd_speed.py --device cuda --repeats 7 --json apgd.json

All runners attack the bundled robust model (so samples stay unbroken and every runner does all
its iterations) on the same batch of held-out images, linf eps 0.3, 100 iterations, 1 restart:

  bound         100 x (forward + backward of the summed cross-entropy w.r.t. the input only,
                parameters' requires_grad off) at the clean batch: what any 100-step gradient
                attack must spend.
  mlsec         mlsec.attacks.APGD(eps=0.3, steps=100).run (101 gradient evaluations: the start
                and 100 iterations).
  art           ART's AutoProjectedGradientDescent through a PyTorchClassifier (eps_step 2 * eps,
                max_iter 100, nb_random_init 1, cross-entropy), on numpy arrays.
  torchattacks  torchattacks.APGD(model, eps=0.3, steps=100, n_restarts=1, loss="ce").

Each runner is warmed up once, then timed --repeats times, interleaved round-robin with the order
rotated each round; the ratios are of medians. The issue's target: mlsec / bound <= 1.1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack_speed import device_name, median_seconds, synchronize

import mlsec
from mlsec.attacks import APGD

EPS = 0.3
STEPS = 100


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    model = mlsec.zoo.load("mnist-cnn-pgd").to(device)
    x, y = mlsec.datasets.mnist_sample()
    x, y = x[: args.batch].to(device), y[: args.batch].to(device)

    def bound() -> None:
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            for _ in range(STEPS):
                leaf = x.detach().requires_grad_(True)
                loss = F.cross_entropy(model(leaf), y, reduction="sum")
                torch.autograd.grad(loss, leaf)
        finally:
            for p in model.parameters():
                p.requires_grad_(True)

    def ours() -> None:
        APGD(eps=EPS, steps=STEPS).run(model, x, y)

    runners: dict[str, Callable[[], None]] = {"bound": bound, "mlsec": ours}
    try:
        from art.attacks.evasion import AutoProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier

        classifier = PyTorchClassifier(
            model=model,
            loss=torch.nn.CrossEntropyLoss(),
            input_shape=tuple(x.shape[1:]),
            nb_classes=10,
            clip_values=(0.0, 1.0),
            device_type="gpu" if device.type == "cuda" else "cpu",
        )
        art_attack = AutoProjectedGradientDescent(
            classifier,
            norm=np.inf,
            eps=EPS,
            eps_step=2 * EPS,
            max_iter=STEPS,
            nb_random_init=1,
            batch_size=args.batch,
            loss_type="cross_entropy",
            verbose=False,
        )
        x_np, y_np = x.cpu().numpy(), y.cpu().numpy()
        runners["art"] = lambda: art_attack.generate(x_np, y_np)  # type: ignore[func-returns-value]
    except ImportError:
        pass
    try:
        import torchattacks

        ta = torchattacks.APGD(model, eps=EPS, steps=STEPS, n_restarts=1, loss="ce")
        runners["torchattacks"] = lambda: ta(x, y)  # type: ignore[func-returns-value]
    except ImportError:
        pass

    def once(name: str) -> float:
        model.eval()
        synchronize(device)
        start = time.perf_counter()
        runners[name]()
        synchronize(device)
        return time.perf_counter() - start

    names = list(runners)
    medians, times = median_seconds(once, names, args.repeats)

    table = Table(
        title=f"APGD-CE, {STEPS} iterations, mnist-cnn-pgd, batch {args.batch}, eps {EPS}, "
        f"on {device_name(device)}"
    )
    table.add_column("runner")
    table.add_column("median s", justify="right")
    table.add_column("median / bound", justify="right")
    table.add_column("median / mlsec", justify="right")
    for name in names:
        table.add_row(
            name,
            f"{medians[name]:.3f}",
            f"{medians[name] / medians['bound']:.3f}",
            f"{medians[name] / medians['mlsec']:.3f}",
        )
    console = Console()
    console.print(table)
    ratio = medians["mlsec"] / medians["bound"]
    console.print(f"mlsec / bound = {ratio:.3f} ({'meets' if ratio <= 1.1 else 'MISSES'} <= 1.1)")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"device": device_name(device), "seconds": times, "medians": medians}, indent=2
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
