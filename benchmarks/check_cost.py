"""What the audit costs beyond its attacks: sanity checks, examples, reports.

Runs whole ``mlsec audit`` commands in fresh processes and reads each JSON report's attack time
(``attack_seconds``) and check costs (``checks``). Work outside the attacks is the command's wall
time minus the attacks' time (start-up and the clean pass included, so it is an upper bound on
what the checks, examples and reports cost; the fixed cost of starting any audit command is
measured too and subtracted as well). Each configuration runs ``--repeats`` times; medians.

    python benchmarks/check_cost.py                      # both commands, 1 repeat
    python benchmarks/check_cost.py --repeats 3 --out check_cost.json

The two commands: ``--model mnist-cnn-pgd --suite standard --eps 0.3 --limit 200`` (the issue's
command, on the bundled PGD-trained model) and the default ``mlsec audit`` (both bundled models,
all 2,000 samples, the default suite). Run it with nothing else on the machine; set
``PYTHONPATH`` to another checkout to measure that version.
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

COMMANDS = {
    "standard-200": [
        "--model",
        "mnist-cnn-pgd",
        "--suite",
        "standard",
        "--eps",
        "0.3",
        "--limit",
        "200",
    ],
    "default": [],
}
# The fixed cost of any audit command: start-up (torch, mlsec, the bundled models and data) and
# one sample's clean pass. Subtracted from the work outside the attacks of each command.
STARTUP = ["--limit", "1", "--attacks", "fgsm", "--eps", "0.1", "--no-checks"]


def run_once(args: list[str], *, reports: bool = True) -> dict[str, float]:
    """One command in a fresh process: its wall time, the attacks' time, the checks' time."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out"
        command = [sys.executable, "-m", "mlsec", "audit", *args, "-q"]
        command += ["--out", str(out)] if reports else []
        begin = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - begin
        if done.returncode not in (0, 1):
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
        reports = sorted(out.rglob("report.json"))
        attacks = checks = 0.0
        for path in reports:
            report = json.loads(path.read_text())
            attacks += sum(report["attack_seconds"].values())
            checks += sum(c["seconds"] for c in report.get("checks", []))
    return {"wall": wall, "attacks": attacks, "checks": checks, "outside": wall - attacks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    options = parser.parse_args()
    runs = [run_once(STARTUP, reports=False)["wall"] for _ in range(options.repeats)]
    startup = statistics.median(runs)
    print(f"start-up (a one-sample audit without checks): {startup:.1f} s", flush=True)
    results: dict[str, dict[str, float]] = {"startup": {"wall": startup}}
    for name, args in COMMANDS.items():
        runs = [run_once(args) for _ in range(options.repeats)]
        median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        median["outside_ratio"] = median["outside"] / median["attacks"]
        median["beyond_startup"] = median["outside"] - startup
        median["beyond_startup_ratio"] = median["beyond_startup"] / median["attacks"]
        median["checks_ratio"] = median["checks"] / median["attacks"]
        results[name] = median
        print(
            f"{name}: wall {median['wall']:.1f} s, attacks {median['attacks']:.1f} s, "
            f"outside the attacks {median['outside']:.1f} s ({100 * median['outside_ratio']:.1f}% "
            f"of the attacks; {100 * median['beyond_startup_ratio']:.1f}% beyond start-up), "
            f"checks {median['checks']:.1f} s ({100 * median['checks_ratio']:.1f}%)",
            flush=True,
        )
    environment = {"python_path": os.environ.get("PYTHONPATH", ""), "repeats": options.repeats}
    if options.out is not None:
        options.out.write_text(json.dumps({"results": results, **environment}, indent=2))


if __name__ == "__main__":
    main()
