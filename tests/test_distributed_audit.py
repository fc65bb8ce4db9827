"""Audits across processes (gloo on the CPU): the same numbers at 1, 2 and 3 ranks as in one.

Each rank runs ``mlsec.audit`` inside an initialised process group, as ``torchrun`` would start
it; the per-sample masks of every stage must equal the single-process run's exactly, because every
random draw is keyed by the sample's index, not by its batch or rank.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import mlsec
from mlsec.attacks import PGD, Square

N = 48


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _suites() -> dict[str, dict[str, Any]]:
    return {
        # The default suite's attacks (FGSM, then PGD with a random start) on a small grid.
        "default": {"suite": "default", "eps": [0.2, 0.35]},
        # Random starts, restarts and Square's proposals: every draw keyed by sample.
        "random": {
            "attacks": [
                PGD(eps=0.1, steps=5, restarts=2, seed=3),
                Square(eps=0.1, queries=40, seed=5),
            ],
            "eps": [0.25, 0.35],
        },
    }


def _masks(report: mlsec.AuditReport) -> dict[str, list[bool]]:
    masks = {f"{a}@{e}": m.tolist() for (a, e), m in report.robust.items()}
    masks["clean"] = report.correct.tolist()
    return masks


def _audit(name: str, batch_size: int, checkpoint: str | None = None) -> mlsec.AuditReport:
    x, y = mlsec.datasets.mnist_sample()
    model = mlsec.zoo.load("mnist-cnn-pgd")
    return mlsec.audit(
        model,
        (x[:N], y[:N]),
        batch_size=batch_size,
        checkpoint=checkpoint,
        sanity_checks=False,
        examples=2,
        **_suites()[name],
    )


def _rank(rank: int, world: int, port: int, out: str, batch_size: int, ckpt: str | None) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {}
        for name in _suites():
            checkpoint = None if ckpt is None else str(Path(ckpt) / name)
            report = _audit(name, batch_size, checkpoint)
            results[name] = {
                "masks": _masks(report),
                "examples": [e.index for e in report.examples],
                "n": report.n,
            }
        Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def _spawn(world: int, tmp: Path, batch_size: int, ckpt: Path | None = None) -> list[Any]:
    out = tmp / f"world{world}"
    out.mkdir()
    mp.spawn(
        _rank,
        args=(world, _free_port(), str(out), batch_size, None if ckpt is None else str(ckpt)),
        nprocs=world,
        join=True,
    )
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.fixture(scope="module")
def single() -> dict[str, Any]:
    return {
        name: {"masks": _masks(report), "examples": [e.index for e in report.examples]}
        for name in _suites()
        for report in [_audit(name, batch_size=N)]
    }


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_give_the_single_process_numbers(
    world: int, single: dict[str, Any], tmp_path: Path
) -> None:
    # A batch size that splits the data unevenly, so ranks get batches of different sizes.
    shares = _spawn(world, tmp_path, batch_size=7)
    for name, expected in single.items():
        for rank, share in enumerate(shares):
            assert share[name]["n"] == N
            assert share[name]["masks"] == expected["masks"], (name, rank)
            assert share[name]["examples"] == expected["examples"], (name, rank)
    # The suites do break samples and leave some standing: the comparison is not trivial.
    for name in single:
        masks = single[name]["masks"]
        standing = [sum(mask) for key, mask in masks.items() if key != "clean"]
        assert sum(masks["clean"]) >= standing[0] > standing[-1] > 0, name


def test_resume_with_another_process_count(single: dict[str, Any], tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    for name in _suites():
        _audit(name, batch_size=5, checkpoint=str(ckpt / name))
        log = ckpt / name / "batches.jsonl"
        lines = log.read_bytes().splitlines(keepends=True)
        assert len(lines) > 4
        # As if killed after four batches, mid-way through writing the fifth.
        log.write_bytes(b"".join(lines[:4]) + lines[4][:10])
    shares = _spawn(2, tmp_path, batch_size=11, ckpt=ckpt)
    for name, expected in single.items():
        assert shares[0][name]["masks"] == expected["masks"], name
        kept = [
            json.loads(line) for line in (ckpt / name / "batches.jsonl").read_bytes().splitlines()
        ]
        resumed = (ckpt / name / "batches.1.jsonl").read_bytes().splitlines()
        assert len(kept) >= 4 and len(resumed) > 0
        # No sample attacked twice in a stage across the logs of both runs.
        seen: dict[int, set[int]] = {}
        for record in kept + [json.loads(line) for line in resumed]:
            stage = seen.setdefault(record["stage"], set())
            assert not stage & set(record["indices"])
            stage.update(record["indices"])


# --- the command line under torchrun --------------------------------------------------------


def _torchrun(world: int, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> Any:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={world}",
        f"--master-port={_free_port()}",
        "-m",
        "mlsec",
        *args,
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=600
    )


def _numbers(path: Path) -> Any:
    report = json.loads(path.read_text())
    return {
        "clean": report["clean_accuracy"],
        "rows": [(r["attack"], r["eps"], r["robust_accuracy"]) for r in report["results"]],
        "worst": report["worst_case"],
    }


def test_torchrun_audit_writes_the_single_process_report_once(tmp_path: Path) -> None:
    args = ["audit", "--model", "mnist-cnn", "--limit", "40", "--steps", "5", "-q"]
    single = subprocess.run(
        [sys.executable, "-m", "mlsec", *args, "--json", "single.json"],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr
    done = _torchrun(2, [*args, "--json", "ranks.json"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _numbers(tmp_path / "ranks.json") == _numbers(tmp_path / "single.json")
    # Rank 0 alone prints: one summary line, as the single process prints.
    assert done.stdout.splitlines() == single.stdout.splitlines()


def test_ranks_given_different_data_stop_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "rankdata.py").write_text(
        "import os\n"
        "import mlsec\n"
        "def data():\n"
        "    x, y = mlsec.datasets.mnist_sample()\n"
        "    start = 10 * int(os.environ['RANK'])\n"
        "    return x[start:start + 30], y[start:start + 30]\n"
    )
    done = _torchrun(
        2, ["audit", "--model", "mnist-cnn", "--data", "rankdata:data", "-q"], tmp_path
    )
    errors = [line for line in done.stderr.splitlines() if line.startswith("mlsec:")]
    assert errors == [
        "mlsec: the ranks were given different settings or data (rank 1 differs from rank 0); "
        "start every rank with the same command and files"
    ], done.stderr[-2000:]
    # Every rank exits 2 (bad input). torchrun stops the job at the first worker that exits, so
    # the other may be listed with 2 or ended by the agent's SIGTERM before it gets there.
    assert done.returncode != 0
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", done.stderr)
    assert "2" in codes and set(codes) <= {"2", "-15"}, done.stderr[-2000:]


def test_a_killed_rank_leaves_a_checkpoint_that_resumes_exactly(tmp_path: Path) -> None:
    (tmp_path / "killer.py").write_text(
        "import os, signal\n"
        "import torch\n"
        "import mlsec\n"
        "class Dying(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.inner = mlsec.zoo.load('mnist-cnn')\n"
        "        self.calls = 0\n"
        "    def forward(self, x):\n"
        "        self.calls += 1\n"
        "        if os.environ.get('RANK') == '1' and self.calls == int(os.environ['DIE_AT']):\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n"
        "        return self.inner(x)\n"
        "def model():\n"
        "    return Dying().eval()\n"
    )
    args = ["audit", "--model", "killer:model", "--limit", "60", "--steps", "5"]
    args += ["--batch-size", "10", "--checkpoint", "ck", "-q", "--json", "report.json"]
    done = _torchrun(2, args, tmp_path, env={"DIE_AT": "12"})
    assert done.returncode != 0
    assert "exitcode  : -9" in done.stderr  # rank 1, killed
    assert not (tmp_path / "report.json").exists()  # no partial numbers as a report
    recorded = (tmp_path / "ck" / "batches.jsonl").read_bytes().splitlines()
    recorded += (tmp_path / "ck" / "batches.1.jsonl").read_bytes().splitlines()
    assert recorded  # finished batches were kept
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "DIE_AT": "0"}
    resumed = subprocess.run(
        [sys.executable, "-m", "mlsec", *args],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    fresh = [a if a != "ck" else "fresh" for a in args[:-1]] + ["fresh.json"]
    subprocess.run(
        [sys.executable, "-m", "mlsec", *fresh], cwd=tmp_path, env=environment, check=True
    )
    assert _numbers(tmp_path / "report.json") == _numbers(tmp_path / "fresh.json")


@pytest.mark.parametrize("batch_size", [7, 64, 500])
@pytest.mark.parametrize("survivors", [True, False])
def test_batch_size_and_survivors_change_no_sample(
    batch_size: int, survivors: bool, single: dict[str, Any]
) -> None:
    x, y = mlsec.datasets.mnist_sample()
    model = mlsec.zoo.load("mnist-cnn-pgd")
    for name, expected in single.items():
        report = mlsec.audit(
            model,
            (x[:N], y[:N]),
            batch_size=batch_size,
            survivors=survivors,
            sanity_checks=False,
            examples=0,
            **_suites()[name],
        )
        assert _masks(report) == expected["masks"], name
