"""The default ``mlsec audit`` across processes: time per sample, torchrun's own cost, rank balance.

Usage (from the repository root, with mlsec installed, on an otherwise idle machine)::

    python benchmarks/distributed.py                        # CPU: --limit 1000, 3 repeats
    python benchmarks/distributed.py --out distributed.json
    python benchmarks/distributed.py --device cuda --ranks 1,2   # GPUs: one per rank

Every run is the default audit work, both bundled models (``mnist-cnn`` and ``mnist-cnn-pgd``) on
the first ``--limit`` bundled images with the default suite and sanity checks, in a fresh process,
with a fresh ``--checkpoint`` folder (so every run pays the same checkpoint writes, and the logs
give each rank's attack time). The configurations, interleaved round-robin in every repeat:

  plain xT      ``python -m mlsec audit ...`` in one process with ``OMP_NUM_THREADS=T``: T = 1,
                and T = the largest N (one core per rank, the fair single-process rival).
  torchrun N    ``python -m torch.distributed.run --standalone --nproc-per-node N -m mlsec audit
                ...`` with ``OMP_NUM_THREADS=1``: N ranks of one thread each.

On ``--device cuda`` every configuration uses GPUs: a plain process one GPU, torchrun N ranks one
GPU each (``LOCAL_RANK``); "per device" then reads "per GPU".

Printed (and written to ``--out`` as JSON), medians over ``--repeats``:

  * seconds per sample of the whole command (wall clock / --limit; both models, process start
    included) and that times the cores (or GPUs) it used: the cost per sample per device;
  * torchrun's own overhead: torchrun N=1 against the plain process with one thread
    (target <= 3%);
  * the speed-up of torchrun N against the plain process with N threads;
  * the rank imbalance per model: ranks meet after every stage (an attack at one eps), so the
    job waits for the slowest rank of each stage. From the checkpoint logs (``batches.jsonl`` for
    rank 0, ``batches.R.jsonl`` for rank R), per stage the sum of the records' ``seconds`` of each
    rank; imbalance = sum over stages of the slowest rank / sum over stages of the mean rank
    (target <= 1.15). The clean pass and rank 0's sanity checks are not in the logs;
  * whether every run's numbers (clean accuracy, every attack row, worst case, for both models)
    equal those of the plain one-thread process: ``identical numbers: True/False`` (exit 1 when
    False).

Timings on a shared machine are noisy: compare only figures of one run.
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
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("mnist-cnn", "mnist-cnn-pgd")
IMBALANCE_TARGET = 1.15
OVERHEAD_TARGET = 0.03


@dataclass(frozen=True)
class Config:
    """One way of running the audit: ``ranks`` 0 means a plain process (no torchrun)."""

    ranks: int
    threads: int

    @property
    def name(self) -> str:
        """The configuration's label in the table."""
        return f"torchrun {self.ranks}" if self.ranks else f"plain x{self.threads}"

    def devices(self, device: str) -> int:
        """Cores (CPU) or GPUs this configuration occupies."""
        if device == "cuda":
            return max(self.ranks, 1)
        return max(self.ranks, 1) * self.threads


@dataclass(frozen=True)
class Run:
    """One finished run: wall seconds, its numbers, and per model its ranks' seconds per stage."""

    seconds: float
    numbers: dict[str, Any]
    stage_seconds: dict[str, dict[int, list[float]]]


def command(config: Config, limit: int, device: str, folder: Path) -> list[str]:
    """The command line of one run, writing its reports and checkpoint into ``folder``."""
    audit = [
        "-m",
        "mlsec",
        "audit",
        "--limit",
        str(limit),
        "--device",
        device,
        "--checkpoint",
        str(folder / "checkpoint"),
        "--json",
        str(folder / "report.json"),
        "-q",
    ]
    if config.ranks == 0:
        return [sys.executable, *audit]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*launcher, "--nproc-per-node", str(config.ranks), *audit]


def numbers(report: dict[str, Any]) -> dict[str, Any]:
    """A JSON report's numbers: clean accuracy, each attack row and the worst case."""
    rows = [
        {key: row[key] for key in ("attack", "eps", "robust_accuracy", "attacked", "broken")}
        for row in report["results"]
    ]
    return {
        "n": report["n"],
        "clean_accuracy": report["clean_accuracy"],
        "results": rows,
        "worst_case": report["worst_case"],
    }


def stage_seconds(checkpoint: Path, world: int) -> dict[int, list[float]]:
    """Per stage, each rank's summed batch seconds, from the per-rank logs of ``checkpoint``."""
    totals: dict[int, list[float]] = defaultdict(lambda: [0.0] * world)
    for rank in range(world):
        log = checkpoint / ("batches.jsonl" if rank == 0 else f"batches.{rank}.jsonl")
        if not log.exists():
            continue
        for line in log.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                totals[int(record["stage"])][rank] += float(record["seconds"])
    return dict(sorted(totals.items()))


def imbalance(stages: dict[int, list[float]]) -> float:
    """Sum over stages of the slowest rank's seconds over the sum of the mean rank's."""
    slowest = sum(max(ranks) for ranks in stages.values())
    mean = sum(statistics.fmean(ranks) for ranks in stages.values())
    return slowest / mean if mean > 0 else 1.0


def run_once(config: Config, limit: int, device: str, scratch: Path) -> Run:
    """Run one configuration in a fresh folder; raises SystemExit if the command fails."""
    folder = Path(tempfile.mkdtemp(dir=scratch))
    env = {**os.environ, "OMP_NUM_THREADS": str(config.threads), "PYTHONPATH": str(ROOT)}
    began = time.perf_counter()
    done = subprocess.run(
        command(config, limit, device, folder),
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - began
    if done.returncode not in (0, 1):  # 1: a sanity-check warning under --strict, or a threshold
        tail = (done.stderr or done.stdout)[-3000:]
        raise SystemExit(f"{config.name} failed (exit {done.returncode}):\n{tail}")
    world = max(config.ranks, 1)
    found: dict[str, Any] = {}
    stages: dict[str, dict[int, list[float]]] = {}
    for model in MODELS:
        found[model] = numbers(json.loads((folder / f"report.{model}.json").read_text()))
        stages[model] = stage_seconds(folder / "checkpoint" / model, world)
    return Run(seconds=seconds, numbers=found, stage_seconds=stages)


def configurations(ranks: list[int], device: str) -> list[Config]:
    """The plain baselines (one thread; as many threads as the most ranks), then torchrun N."""
    most = max(ranks)
    plain = [Config(0, 1)]
    if device == "cpu" and most > 1:
        plain.append(Config(0, most))
    return [*plain, *(Config(n, 1) for n in ranks)]


def measure(args: argparse.Namespace, scratch: Path) -> dict[Config, list[Run]]:
    """Every configuration ``--repeats`` times, interleaved, after one short unrecorded warm-up."""
    configs = configurations(args.ranks, args.device)
    warm = subprocess.run(
        [sys.executable, "-m", "mlsec", "attacks"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        check=False,
    )
    if warm.returncode != 0:
        raise SystemExit(f"mlsec does not start:\n{warm.stderr.decode()[-2000:]}")
    runs: dict[Config, list[Run]] = {config: [] for config in configs}
    for repeat in range(args.repeats):
        order = configs if repeat % 2 == 0 else configs[::-1]
        for config in order:
            run = run_once(config, args.limit, args.device, scratch)
            runs[config].append(run)
            print(f"  repeat {repeat + 1}: {config.name:12s} {run.seconds:8.2f} s", flush=True)
    return runs


def summarise(runs: dict[Config, list[Run]], args: argparse.Namespace) -> dict[str, Any]:
    """Medians, overhead, speed-ups, imbalance and the numbers check, as JSON data."""
    configs = list(runs)
    reference = runs[configs[0]][0].numbers  # plain, one thread
    rows = []
    for config, done in runs.items():
        median = statistics.median(run.seconds for run in done)
        per_sample = median / args.limit
        rows.append(
            {
                "config": config.name,
                "ranks": config.ranks,
                "threads": config.threads,
                "seconds": [run.seconds for run in done],
                "median_seconds": median,
                "seconds_per_sample": per_sample,
                "seconds_per_sample_per_device": per_sample * config.devices(args.device),
                "identical_numbers": all(run.numbers == reference for run in done),
                "imbalance": {
                    model: statistics.median(imbalance(run.stage_seconds[model]) for run in done)
                    for model in MODELS
                }
                if config.ranks > 1
                else None,
            }
        )
    by_name = {row["config"]: row for row in rows}
    overhead = None
    if "torchrun 1" in by_name:
        base = by_name["plain x1"]["median_seconds"]
        overhead = by_name["torchrun 1"]["median_seconds"] / base - 1
    most = max(args.ranks)
    rival = by_name.get(f"plain x{most}" if args.device == "cpu" else "plain x1")
    speedup = None
    if rival is not None and f"torchrun {most}" in by_name:
        speedup = rival["median_seconds"] / by_name[f"torchrun {most}"]["median_seconds"]
    return {
        "device": args.device,
        "limit": args.limit,
        "repeats": args.repeats,
        "models": list(MODELS),
        "rows": rows,
        "overhead_at_1": overhead,
        "speedup": {"ranks": most, "against": rival["config"] if rival else None, "value": speedup},
        "identical_numbers": all(row["identical_numbers"] for row in rows),
    }


def show(summary: dict[str, Any]) -> None:
    """The table and the verdicts."""
    unit = "GPU" if summary["device"] == "cuda" else "core"
    print(
        f"\ndefault `mlsec audit` ({', '.join(summary['models'])}), {summary['limit']} samples, "
        f"{summary['device']}, medians of {summary['repeats']}"
    )
    header = f"{'config':12s} {'seconds':>9s} {'ms/sample':>10s} {'ms/sample x ' + unit:>16s}"
    print(header + "  imbalance " + " / ".join(summary["models"]))
    for row in summary["rows"]:
        balance = row["imbalance"]
        shown = " / ".join(f"{balance[m]:.3f}" for m in summary["models"]) if balance else "-"
        print(
            f"{row['config']:12s} {row['median_seconds']:9.2f} "
            f"{1000 * row['seconds_per_sample']:10.2f} "
            f"{1000 * row['seconds_per_sample_per_device']:16.2f}  {shown}"
        )
    overhead = summary["overhead_at_1"]
    if overhead is not None:
        verdict = "met" if overhead <= OVERHEAD_TARGET else "NOT met"
        print(
            f"torchrun's own overhead at N=1 (against plain x1): {100 * overhead:+.1f}% "
            f"(target <= {100 * OVERHEAD_TARGET:.0f}%: {verdict})"
        )
    speedup = summary["speedup"]
    if speedup["value"] is not None:
        print(
            f"speed-up of torchrun {speedup['ranks']} against {speedup['against']}: "
            f"{speedup['value']:.2f}x"
        )
    for row in summary["rows"]:
        if row["imbalance"]:
            worst = max(row["imbalance"].values())
            verdict = "met" if worst <= IMBALANCE_TARGET else "NOT met"
            print(
                f"rank imbalance at {row['config']} (slowest/mean rank, worst model): "
                f"{worst:.3f} (target <= {IMBALANCE_TARGET}: {verdict})"
            )
    print(f"identical numbers: {summary['identical_numbers']}")


def parse_ranks(text: str) -> list[int]:
    """``1,2`` -> [1, 2]: the process counts to run under torchrun."""
    try:
        ranks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers such as 1,2, got {text!r}") from None
    if not ranks or ranks[0] < 1:
        raise argparse.ArgumentTypeError(f"process counts must be >= 1, got {text!r}")
    return ranks


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 1 when a run's numbers differ from the single process's."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=1000, help="samples (default 1000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration")
    parser.add_argument("--ranks", type=parse_ranks, default=[1, 2], help="default 1,2")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args(argv)
    if args.limit < 1 or args.repeats < 1:
        parser.error("--limit and --repeats must be >= 1")
    with tempfile.TemporaryDirectory(prefix="mlsec-distributed-") as scratch:
        summary = summarise(measure(args, Path(scratch)), args)
    show(summary)
    if args.out is not None:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["identical_numbers"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
