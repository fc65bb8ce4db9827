"""The bundled robust model's figures: clean and PGD accuracy on all 2,000 held-out images.

Usage (from the repository root, with mlsec installed)::

    python benchmarks/robust_model.py                  # PGD-40 x 5 restarts, step 0.01, eps 0.3
    python benchmarks/robust_model.py --strong         # also PGD-100 x 20 restarts (GPU advised)
    python benchmarks/robust_model.py --device cuda --json robust.json

``mnist-cnn-pgd`` must reach at least 95% clean and 80% PGD-40 x 5 accuracy (the issue's targets);
``mnist-cnn``, the standard model of the same data, is shown beside it. For comparison the script
prints the published figures of Madry et al.'s MNIST model (trained on all 60,000 MNIST training
images with a larger network) from Croce and Hein's AutoAttack table: 98.53% clean, 89.62% as
reported, 88.50% under AutoAttack.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

import mlsec
from mlsec.attacks import PGD

EPS = 0.3
TARGETS = {"clean": 0.95, "pgd-40x5": 0.80}
PUBLISHED = (
    "published, Madry et al.'s MNIST model at eps 0.3 (AutoAttack table): clean 98.53%, "
    "reported 89.62%, AutoAttack 88.50%"
)


def accuracy(model: nn.Module, attack: PGD | None, x: torch.Tensor, y: torch.Tensor) -> float:
    correct = 0
    for xb, yb in zip(x.split(500), y.split(500), strict=True):
        if attack is not None:
            correct += int((~attack.run(model, xb, yb).success).sum())
        else:
            with torch.no_grad():
                correct += int((model(xb).argmax(1) == yb).sum())
    return correct / len(y)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--strong", action="store_true", help="add PGD-100 with 20 restarts")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    x, y = (t.to(device) for t in mlsec.datasets.mnist_sample())
    attacks: dict[str, PGD | None] = {
        "clean": None,
        "pgd-40x5": PGD(eps=EPS, steps=40, step_size=0.01, restarts=5),
    }
    if args.strong:
        attacks["pgd-100x20"] = PGD(eps=EPS, steps=100, step_size=0.01, restarts=20)
    results: dict[str, dict[str, float]] = {}
    seconds: dict[str, dict[str, float]] = {}
    for name in ("mnist-cnn", "mnist-cnn-pgd"):
        model = mlsec.zoo.load(name).to(device)
        results[name], seconds[name] = {}, {}
        for label, attack in attacks.items():
            start = time.perf_counter()
            results[name][label] = accuracy(model, attack, x, y)
            seconds[name][label] = time.perf_counter() - start

    table = Table(title=f"Accuracy on the 2,000 held-out MNIST images, linf eps {EPS}")
    table.add_column("model")
    for label in attacks:
        table.add_column(label, justify="right")
    for name, row in results.items():
        table.add_row(
            name,
            *(f"{100 * row[k]:.2f}% ({seconds[name][k]:.0f} s)" for k in attacks),
        )
    console = Console()
    console.print(table)
    console.print(PUBLISHED)
    robust = results["mnist-cnn-pgd"]
    ok = all(robust[k] >= v for k, v in TARGETS.items())
    console.print(
        "mnist-cnn-pgd "
        + ("meets" if ok else "MISSES")
        + " its targets: "
        + ", ".join(f"{k} >= {100 * v:.0f}%" for k, v in TARGETS.items())
    )
    if args.json is not None:
        args.json.write_text(
            json.dumps({"device": str(device), "accuracy": results, "seconds": seconds}, indent=2)
            + "\n"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
