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

``--compare-with TREE`` times instead the default command, ``mlsec audit`` with no arguments (both
bundled models, the bundled data, the default suite, sanity checks on), run by this tree and by
another checkout of mlsec (e.g. ``git worktree add /tmp/before <commit>``), interleaved, each in
a fresh process; it also checks that both give identical numbers::

    python benchmarks/audit_speed.py --compare-with /tmp/before --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import mlsec
from mlsec.attacks import pgd


def run_once(
    model: torch.nn.Module, data: tuple[torch.Tensor, torch.Tensor], survivors: bool
) -> tuple[float, dict[float, float]]:
    start = time.perf_counter()
    report = mlsec.audit(model, data, suite="default", sanity_checks=False, survivors=survivors)
    return time.perf_counter() - start, report.worst_case


ROOT = Path(__file__).resolve().parents[1]
# Report fields that hold the audit's numbers (not timings, versions or paths).
NUMBERS = ("clean_accuracy", "robust_accuracy", "attacked", "broken", "n", "attack", "eps")


def numbers(report: Any) -> Any:
    """The numbers of a JSON report, with timings and settings left out."""
    if isinstance(report, list):
        return [numbers(item) for item in report]
    if isinstance(report, dict):
        if all(key.endswith(".json") for key in report):
            return {key: numbers(value) for key, value in report.items()}
        kept = {k: numbers(v) for k, v in report.items() if k in NUMBERS}
        for key in ("reports", "results", "worst_case", "models"):
            if key in report:
                kept[key] = numbers(report[key])
        return kept
    return report


def default_audit(tree: Path, folder: Path) -> tuple[float, Any]:
    """Seconds of ``mlsec audit`` (no arguments) run from ``tree``, and its JSON reports."""
    out = folder / "out"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "mlsec", "audit", "-q", "--out", str(out)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"mlsec audit from {tree} failed:\n{done.stderr}")
    reports = {
        p.relative_to(out).as_posix(): json.loads(p.read_text()) for p in out.rglob("*.json")
    }
    return seconds, dict(sorted(reports.items()))


def compare_trees(baseline: Path, repeats: int) -> dict[str, Any]:
    """Time the default audit of this tree against ``baseline``, interleaved; check the numbers."""
    trees = [("this tree", ROOT), ("baseline", baseline.resolve())]
    times: dict[str, list[float]] = {name: [] for name, _ in trees}
    reports: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(repeats + 1):  # round 0 warms the file cache up
            order = trees if round_ % 2 == 0 else trees[::-1]
            for name, tree in order:
                seconds, report = default_audit(tree, Path(scratch))
                reports[name] = numbers(report)
                if round_ > 0:
                    times[name].append(seconds)
    medians = {name: statistics.median(values) for name, values in times.items()}
    same = reports["this tree"] == reports["baseline"]
    print(f"default `mlsec audit` (two bundled models), {repeats} runs each, interleaved")
    for name, values in times.items():
        print(
            f"{name:10s} min {min(values):7.2f} s  median {medians[name]:7.2f} s  "
            f"max {max(values):7.2f} s"
        )
    ratio = medians["this tree"] / medians["baseline"]
    print(f"ratio of medians this tree / baseline: {ratio:.3f}; identical numbers: {same}")
    return {"times": times, "medians": medians, "ratio": ratio, "identical_numbers": same}


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
    parser.add_argument(
        "--compare-with",
        type=Path,
        default=None,
        metavar="TREE",
        help="time the default `mlsec audit` of this tree against another checkout",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.limit < 1:
        parser.error("--repeats and --limit must be >= 1")
    if args.compare_with is not None:
        if not (args.compare_with / "mlsec" / "__init__.py").is_file():
            parser.error(f"--compare-with: {args.compare_with} holds no mlsec package")
        result = compare_trees(args.compare_with, args.repeats)
        if args.json is not None:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        return 0 if result["identical_numbers"] else 1
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
