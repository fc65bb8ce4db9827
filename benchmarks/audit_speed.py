"""Time saved by auditing survivors only, against the naive run, on the bundled model.

Usage (from the repository root, with mlsec installed)::

    python benchmarks/audit_speed.py                 # 3 repeats, all 2,000 bundled images
    python benchmarks/audit_speed.py --repeats 5 --limit 1000 --json audit_speed.json

Both runs audit ``mnist-cnn`` on the bundled sample with the default suite (FGSM, then PGD-40) at
linf eps 0.1, 0.2 and 0.3, sanity checks off:

  survivors   mlsec.audit as shipped: at each eps each attack runs only on the samples that no
              smaller eps and no earlier attack broke.
  naive       mlsec.audit(survivors=False): every attack on every sample at every eps, then the
              same per-sample bookkeeping. Same numbers (exactly, for deterministic attacks).

On the CPU, mlsec's PGD also drops a sample from its batch once it has succeeded, which already
saves the naive run much of its waste. ``--gpu-path`` repeats both runs with that switched off
(the code path an accelerator takes, where the batch keeps its shape), so the survivors saving
can be read for both paths. Runs are interleaved round-robin; ratios are of medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import mlsec
from mlsec.attacks import pgd


def run_once(
    model: torch.nn.Module, data: tuple[torch.Tensor, torch.Tensor], survivors: bool
) -> tuple[float, dict[float, float]]:
    start = time.perf_counter()
    report = mlsec.audit(model, data, suite="default", sanity_checks=False, survivors=survivors)
    return time.perf_counter() - start, report.worst_case


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--limit", type=int, default=2000, help="bundled images to audit (default 2000)"
    )
    parser.add_argument(
        "--gpu-path", action="store_true", help="also time with the in-batch early exit off"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.limit < 1:
        parser.error("--repeats and --limit must be >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    x, y = mlsec.datasets.mnist_sample()
    data = (x[: args.limit], y[: args.limit])
    model = mlsec.zoo.load("mnist-cnn")
    configs = [("survivors", True, True), ("naive", False, True)]
    if args.gpu_path:
        configs += [("survivors, gpu path", True, False), ("naive, gpu path", False, False)]

    times: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    worst: dict[str, dict[float, float]] = {}
    for round_ in range(args.repeats + 1):  # round 0 warms up
        order = configs[round_ % len(configs) :] + configs[: round_ % len(configs)]
        for name, survivors, shrink in order:
            pgd.SHRINK_ON_CPU = shrink
            seconds, worst[name] = run_once(model, data, survivors)
            if round_ > 0:
                times[name].append(seconds)
    pgd.SHRINK_ON_CPU = True

    print(
        f"mlsec {mlsec.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"mnist-cnn, {args.limit} images, default suite (FGSM + PGD-40), eps 0.1/0.2/0.3"
    )
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        print(
            f"{name:22s} min {min(values):7.2f} s  median {medians[name]:7.2f} s  "
            f"max {max(values):7.2f} s"
            f"  worst case {', '.join(f'{100 * v:.2f}%' for v in worst[name].values())}"
        )
    ratios = {"naive/survivors": medians["naive"] / medians["survivors"]}
    if args.gpu_path:
        ratios["naive/survivors (gpu path)"] = (
            medians["naive, gpu path"] / medians["survivors, gpu path"]
        )
    for key, value in ratios.items():
        print(f"ratio of medians {key}: {value:.2f}  (target >= 2)")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "times": times,
                    "medians": medians,
                    "ratios": ratios,
                    "worst_case": {k: {str(e): a for e, a in v.items()} for k, v in worst.items()},
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
