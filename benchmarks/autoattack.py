"""mlsec's `standard` suite against ART's and torchattacks' AutoAttack: robust accuracy and time.

Usage (from the repository root, with mlsec installed; ART and torchattacks optional)::

    python benchmarks/autoattack.py                       # CPU: first 100 held-out images
    python benchmarks/autoattack.py --n 500 --device cuda --json autoattack.json

One run of each on the same images of the bundled robust model ``mnist-cnn-pgd``, linf eps 0.3,
every gradient attack at 100 iterations and 1 restart, Square at 5,000 queries:

  mlsec         ``mlsec.audit(model, data, suite="standard", eps=[0.3])``: APGD-CE, then APGD-T
                against the 9 other classes, then Square, each on the samples still standing;
                per-sample worst case. The audit's sanity checks are off (they are not attacks).
                With --components, each of its attacks is also run alone on every image
                afterwards (untimed): the worst case must be no higher than any of them.
  art           ART's ``AutoAttack`` with AutoAttack's attacks as far as ART expresses them:
                ``AutoProjectedGradientDescent`` with the cross-entropy loss, the same with the
                DLR loss, ``SquareAttack`` (p_init 0.8). ART runs targeted attacks only with
                ``targeted=True``, which turns *every* listed attack, Square included, against
                every target class; so its second attack is untargeted APGD-DLR instead of
                APGD-T (9x less gradient work than mlsec's APGD-T).
  torchattacks  torchattacks' AutoAttack chain (``MultiAttack``) with its iterations set to 100:
                APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square. Its ``AutoAttack`` class
                fixes the gradient attacks at 10 steps, hence the explicit chain.

Two more runners, not run by default, time Square alone (linf, 5,000 queries) on every image:
``--only square-mlsec,square-art`` (the attack that dominates both chains' time).

Every runner's examples are checked: inside the eps ball and the bounds, and the robust accuracy
is recomputed from the model's own predictions on them. Targets (issue 5): mlsec's robust
accuracy no higher than either peer's, and mlsec at least 3x faster than ART.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack_speed import device_name, synchronize

import mlsec

EPS = 0.3
STEPS = 100
QUERIES = 5000


def _mlsec(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    report = mlsec.audit(model, (x, y), suite="standard", eps=[EPS], sanity_checks=False)
    standing = report.robust[("square", EPS)].cpu()  # the chain's last attack: the worst case
    assert int(standing.sum()) == round(report.worst_case[EPS] * len(x))
    for outcome in report.outcomes:
        print(
            f"  mlsec chain: after {outcome.attack} {outcome.robust_accuracy:.2%} "
            f"({outcome.attacked} attacked, {outcome.broken} broken, {outcome.seconds:.1f} s)"
        )
    return standing


def _components(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Each attack of the standard suite alone, on every sample: the chain must beat them all."""
    accuracies = {}
    for entry in mlsec.auditing.suite.load_suite("standard").entries:
        attack = dataclasses.replace(entry.attack, eps=EPS)
        start = time.perf_counter()
        accuracy = float((~attack.run(model, x, y).success).float().mean())
        print(f"  {entry.label} alone: {accuracy:.2%} ({time.perf_counter() - start:.1f} s)")
        accuracies[entry.label] = accuracy
    return accuracies


def _art_classifier(model: torch.nn.Module, x: torch.Tensor) -> Any:
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="gpu" if x.device.type == "cuda" else "cpu",
    )


def _art(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    from art.attacks.evasion import AutoAttack, AutoProjectedGradientDescent, SquareAttack

    classifier = _art_classifier(model, x)
    common = {"norm": np.inf, "eps": EPS, "batch_size": len(x)}
    attacks = [
        AutoProjectedGradientDescent(
            classifier,
            eps_step=2 * EPS,
            max_iter=STEPS,
            nb_random_init=1,
            loss_type=loss,
            verbose=False,
            **common,
        )
        for loss in ("cross_entropy", "difference_logits_ratio")
    ]
    attacks.append(
        SquareAttack(
            classifier, max_iter=QUERIES, p_init=0.8, nb_restarts=1, verbose=False, **common
        )
    )
    auto = AutoAttack(classifier, eps_step=2 * EPS, attacks=attacks, **common)
    np.random.seed(0)
    x_adv = torch.from_numpy(auto.generate(x.cpu().numpy(), y.cpu().numpy())).to(x.device)
    return _correct(model, x, y, x_adv)


def _square_mlsec(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x_adv = mlsec.attacks.Square(eps=EPS, queries=QUERIES)(model, x, y)
    return _correct(model, x, y, x_adv)


def _square_art(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    from art.attacks.evasion import SquareAttack

    attack = SquareAttack(
        _art_classifier(model, x),
        norm=np.inf,
        eps=EPS,
        max_iter=QUERIES,
        p_init=0.8,
        nb_restarts=1,
        batch_size=len(x),
        verbose=False,
    )
    np.random.seed(0)
    x_adv = torch.from_numpy(attack.generate(x.cpu().numpy(), y.cpu().numpy())).to(x.device)
    return _correct(model, x, y, x_adv)


def _torchattacks(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    import torchattacks

    chain = torchattacks.MultiAttack(
        [
            torchattacks.APGD(model, eps=EPS, steps=STEPS, n_restarts=1, loss="ce", seed=0),
            torchattacks.APGDT(model, eps=EPS, steps=STEPS, n_restarts=1, n_classes=10, seed=0),
            torchattacks.FAB(
                model, eps=EPS, steps=STEPS, n_restarts=1, multi_targeted=True, n_classes=10, seed=0
            ),
            torchattacks.Square(
                model, eps=EPS, n_queries=QUERIES, n_restarts=1, p_init=0.8, seed=0
            ),
        ]
    )
    return _correct(model, x, y, chain(x, y))


def _correct(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor
) -> torch.Tensor:
    """Per sample: still classified correctly, after checking the examples are admissible."""
    gap = (x_adv.float() - x.float()).abs().flatten(1).amax(1).max().item()
    if gap > EPS + 1e-5 or x_adv.min() < 0 or x_adv.max() > 1:
        raise SystemExit(f"inadmissible examples: linf distance {gap:.6f}")
    with torch.no_grad():
        return (model(x_adv.float()).argmax(1) == y).cpu()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=100, help="held-out images (default 100)")
    parser.add_argument("--only", default="mlsec,art,torchattacks", help="runners, comma-separated")
    parser.add_argument(
        "--components", action="store_true", help="also run each mlsec attack alone on every image"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    model = mlsec.zoo.load("mnist-cnn-pgd").to(device).eval()
    x, y = mlsec.datasets.mnist_sample()
    x, y = x[: args.n].to(device), y[: args.n].to(device)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())

    runners: dict[str, Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "mlsec": _mlsec,
        "art": _art,
        "torchattacks": _torchattacks,
        "square-mlsec": _square_mlsec,
        "square-art": _square_art,
    }
    console = Console()
    results: dict[str, dict[str, float]] = {}
    for name in args.only.split(","):
        try:
            runner = runners[name]
        except KeyError:
            raise SystemExit(
                f"--only: unknown runner {name!r}; choose from {', '.join(runners)}"
            ) from None
        torch.manual_seed(0)
        synchronize(device)
        start = time.perf_counter()
        try:
            correct = runner(model, x, y)
        except ImportError as error:
            console.print(f"{name}: skipped ({error})")
            continue
        synchronize(device)
        seconds = time.perf_counter() - start
        results[name] = {"robust_accuracy": float(correct.float().mean()), "seconds": seconds}
        console.print(f"{name}: {results[name]['robust_accuracy']:.2%} in {seconds:.1f} s")

    components = _components(model, x, y) if args.components else {}
    if components and "mlsec" in results:
        worst = results["mlsec"]["robust_accuracy"]
        verdict = "holds" if worst <= min(components.values()) else "FAILS"
        console.print(f"mlsec worst case {worst:.2%} <= min of its attacks alone: {verdict}")

    table = Table(
        title=f"AutoAttack-style chains, mnist-cnn-pgd, {args.n} images, linf eps {EPS}, "
        f"clean {clean:.1%}, on {device_name(device)}"
    )
    for column in ("runner", "robust accuracy", "seconds", "seconds / mlsec"):
        table.add_column(column, justify="left" if column == "runner" else "right")
    for name, result in results.items():
        # Chains against mlsec's chain, Square alone against mlsec's Square alone.
        base = results.get("square-mlsec" if name.startswith("square") else "mlsec")
        ratio = result["seconds"] / base["seconds"] if base else float("nan")
        table.add_row(
            name, f"{result['robust_accuracy']:.2%}", f"{result['seconds']:.1f}", f"{ratio:.2f}"
        )
    console.print(table)
    if args.json is not None:
        payload = {
            "device": device_name(device),
            "n": args.n,
            "clean": clean,
            "results": results,
            "components": components,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
