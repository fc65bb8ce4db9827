"""Peak memory of an audit that streams an image folder: 1,000 images against 20,000.

Usage (from the repository root, with mlsec installed)::

    python benchmarks/streaming_memory.py                     # 1,000 and 20,000 images
    python benchmarks/streaming_memory.py --sizes 200 2000    # a quick check that it runs
    python benchmarks/streaming_memory.py --workers 2 --json streaming_memory.json

It writes N random 3x64x64 PNG images into 10 class folders of a temporary folder (the largest
size once; each smaller size is a folder of hard links to its first images), then for each size
runs, in a fresh Python process, ``mlsec.io.load_data(folder)`` and ``mlsec.audit(model,
samples, attacks=["fgsm"], eps=[0.03], sanity_checks=False, survivors=False)`` (every sample
attacked, so both sizes attack full batches) with a small seeded 3x64x64 CNN.
The child reports its peak resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, and
that of its DataLoader workers, ``RUSAGE_CHILDREN``). The issue's target: the largest size uses
at most 150 MB more than the smallest. Timing is not measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CLASSES = 10
SIDE = 64


def write_images(root: Path, count: int, seed: int = 0) -> None:
    """``count`` random RGB PNGs, dealt round-robin into class folders ``0`` .. ``9``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label in range(CLASSES):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 256, size=(SIDE, SIDE, 3), dtype=np.uint8)
        Image.fromarray(pixels, mode="RGB").save(root / str(i % CLASSES) / f"{i:06d}.png")


def linked_subset(source: Path, target: Path, count: int) -> None:
    """A folder of hard links to the first ``count`` images of ``source`` (same dealing)."""
    for label in range(CLASSES):
        (target / str(label)).mkdir(parents=True)
    for i in range(count):
        name = Path(str(i % CLASSES)) / f"{i:06d}.png"
        os.link(source / name, target / name)


def child(folder: str, batch_size: int, workers: int) -> None:
    """Audit the folder in this process and print the peak memory as JSON (the child's side)."""
    import torch
    from torch import nn

    import mlsec
    from mlsec.io import load_data

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, CLASSES),
    ).eval()
    start = time.perf_counter()
    samples, _, _ = load_data(folder)
    report = mlsec.audit(
        model,
        samples,
        attacks=["fgsm"],
        eps=[0.03],
        sanity_checks=False,
        # Every sample attacked, so both sizes run full batches through the attack (with the
        # survivors only, the small set would attack fewer, smaller batches, and its peak would
        # be lower for that reason alone, not for holding less data).
        survivors=False,
        batch_size=batch_size,
        workers=workers,
    )
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    workers_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "images": len(samples),
                "peak_rss_mb": round(own, 1),
                "workers_peak_rss_mb": round(workers_peak, 1),
                "clean_accuracy": report.clean_accuracy,
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    )


def measure(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run :func:`child` on ``folder`` in a fresh process; its JSON line."""
    command = [
        sys.executable,
        __file__,
        "--child",
        str(folder),
        "--batch-size",
        str(args.batch_size),
        "--workers",
        str(args.workers),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        sys.exit(f"the audit of {folder} failed ({done.returncode}):\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 20000])
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--target-mb", type=float, default=150.0)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.batch_size, args.workers)
        return
    sizes = sorted(set(args.sizes))
    with tempfile.TemporaryDirectory(prefix="mlsec-stream-") as tmp:
        full = Path(tmp) / f"images-{sizes[-1]}"
        began = time.perf_counter()
        write_images(full, sizes[-1])
        print(
            f"wrote {sizes[-1]} PNG images 3x{SIDE}x{SIDE} in {time.perf_counter() - began:.0f} s"
        )
        results = []
        for size in sizes:
            folder = full
            if size != sizes[-1]:
                folder = Path(tmp) / f"images-{size}"
                linked_subset(full, folder, size)
            result = measure(folder, args)
            results.append(result)
            # A forked worker's peak counts the pages it shares with the parent: shown as such.
            shared = f" (workers {result['workers_peak_rss_mb']:.1f} MB)" if args.workers else ""
            print(
                f"{size:>7} images: peak RSS {result['peak_rss_mb']:8.1f} MB{shared}, "
                f"clean accuracy {result['clean_accuracy']:.3f}, {result['seconds']} s"
            )
    growth = results[-1]["peak_rss_mb"] - results[0]["peak_rss_mb"]
    verdict = "meets" if growth <= args.target_mb else "misses"
    print(
        f"difference {sizes[-1]} - {sizes[0]} images: {growth:+.1f} MB "
        f"({verdict} the target of at most {args.target_mb:g} MB)"
    )
    if args.json is not None:
        figures = {"sizes": sizes, "results": results, "difference_mb": growth}
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
