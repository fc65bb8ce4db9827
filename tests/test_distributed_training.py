"""Training over ranks (DistributedDataParallel, gloo on the CPU) reaches one process's weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import mlsec

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

# Trains PGD-AT and TRADES on 256 images in global batches of 85 (85, 85, 85, 1: uneven, and the
# last leaves rank 1 of 2 an empty share); each rank saves its weights and history.
WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch, torch.distributed as dist
    import mlsec
    from mlsec.defenses import TRADES, PGDAdversarialTraining, TrainConfig

    out, mode = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    if "RANK" in os.environ:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    x, y = mlsec.datasets.mnist_sample()
    train, held = (x[:256], y[:256]), (x[256:856], y[256:856])
    config = TrainConfig(
        epochs=2, batch_size=85, optimizer="sgd", lr=0.05, seed=3, eval_steps=2, eval_size=600
    )
    methods = {"pgd": PGDAdversarialTraining(eps=0.3, steps=2), "trades": TRADES(eps=0.3, steps=2)}

    class Stop(Exception):
        pass

    def stop(record):
        raise Stop

    saved, histories = {}, {}
    for name in ["pgd"] if mode != "full" else ["pgd", "trades"]:
        torch.manual_seed(0)
        model = mlsec.zoo.architectures.mnist_cnn()
        saved["init"] = {k: v.clone() for k, v in model.state_dict().items()}
        options = {"folder": os.path.join(out, "run")} if mode != "full" else {}
        try:
            result = methods[name].fit(
                train, model=model, config=config, held_out=held, resume=mode == "resume",
                on_epoch=stop if mode == "interrupt" else None, **options
            )
            histories[name] = result.history
        except Stop:
            pass
        saved[name] = model.state_dict()
    torch.save(saved, os.path.join(out, f"{mode}-{rank}.pt"))
    with open(os.path.join(out, f"{mode}-{rank}.json"), "w") as fh:
        json.dump(histories, fh)
    if dist.is_initialized():
        dist.destroy_process_group()
    """
)


def run_worker(out: Path, mode: str, ranks: int | None) -> None:
    script = out / "worker.py"
    script.write_text(WORKER)
    launcher = [sys.executable] if ranks is None else [*TORCHRUN, str(ranks)]
    proc = subprocess.run(
        [*launcher, str(script), str(out), mode], env=ENV, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def free_port() -> int:
    """A TCP port on the loopback interface that nothing holds now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process's run of the worker (the reference)."""
    out = tmp_path_factory.mktemp("single")
    run_worker(out, "full", None)
    return out


def test_two_ranks_reach_the_weights_of_one_process(single: Path, tmp_path: Path) -> None:
    run_worker(tmp_path, "full", 2)
    one = torch.load(single / "full-0.pt")
    rank0, rank1 = (torch.load(tmp_path / f"full-{r}.pt") for r in (0, 1))
    for name in ("pgd", "trades"):
        # Training moved the weights far more than the tolerance: the comparison means something.
        assert max_difference(one[name], one["init"]) > 1e-2
        # TRADES' inner KL gradient starts near zero, where the linf step's sign can flip with
        # rounding that depends on the batch's composition: a looser bound for it only.
        assert max_difference(rank0[name], one[name]) <= (1e-5 if name == "pgd" else 1e-3), name
        # DistributedDataParallel gives every rank the same averaged gradient.
        assert max_difference(rank0[name], rank1[name]) == 0.0
    histories = [json.loads((folder / "full-0.json").read_text()) for folder in (single, tmp_path)]
    for name in ("pgd", "trades"):
        for ours, theirs in zip(histories[1][name], histories[0][name], strict=True):
            # Loss and train accuracy are summed over the ranks' shares: the global batch's.
            assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-4)
            assert abs(ours["train_accuracy"] - theirs["train_accuracy"]) <= 1 / 256
            # The held-out chunks split over the ranks; each sample's start keyed by its index.
            for key in ("clean_accuracy", "robust_accuracy"):
                assert abs(ours[key] - theirs[key]) <= 1 / 600, key


def test_a_run_interrupted_on_two_ranks_resumes_exactly_in_one_process(
    single: Path, tmp_path: Path
) -> None:
    run_worker(tmp_path, "interrupt", 2)
    # Rank 0 alone wrote the run folder, after the first of two epochs.
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == [
        "best.safetensors",
        "checkpoint.safetensors",
        "log.jsonl",
    ]
    assert len((run / "log.jsonl").read_text().splitlines()) == 1
    run_worker(tmp_path, "resume", None)
    resumed = torch.load(tmp_path / "resume-0.pt")["pgd"]
    assert max_difference(resumed, torch.load(single / "full-0.pt")["pgd"]) <= 1e-5
    assert len(json.loads((tmp_path / "resume-0.json").read_text())["pgd"]) == 2


def cli_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--model",
        "mlsec.zoo.architectures:mnist_cnn",
        "--data",
        str(data),
        "--val-split",
        "0.25",
        "--steps",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "70",
        "--lr",
        "3e-3",
        "--eval-steps",
        "2",
        "--device",
        "cpu",
        "--no-audit",
        "--out",
        str(out),
        *extra,
    ]


def test_the_cli_under_torchrun_writes_one_run_equal_to_one_process(tmp_path: Path) -> None:
    x, y = mlsec.datasets.mnist_sample()
    data = tmp_path / "data.npz"
    np.savez(data, x=x[:300].numpy(), y=y[:300].numpy())
    runs = {}
    for ranks, launcher in ((1, [sys.executable]), (2, [*TORCHRUN, "2"])):
        out = tmp_path / f"run{ranks}"
        command = [*launcher, "-m", "mlsec", *cli_args(data, out)]
        proc = subprocess.run(command, env=ENV, capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        # Rank 0 alone prints the closing lines.
        assert proc.stdout.count("weights: ") == 1
        runs[ranks] = out
    names = {ranks: sorted(p.name for p in out.iterdir()) for ranks, out in runs.items()}
    assert names[1] == names[2] and "model.safetensors" in names[2]
    weights = {ranks: load_file(out / "model.safetensors") for ranks, out in runs.items()}
    assert max_difference(weights[2], weights[1]) <= 1e-5
    summaries = {r: json.loads((out / "train.json").read_text()) for r, out in runs.items()}
    for key in ("clean_accuracy", "robust_accuracy"):
        assert abs(summaries[2]["final"][key] - summaries[1]["final"][key]) <= 1 / 75


def test_ranks_given_different_arguments_stop_with_one_line_and_exit_2(tmp_path: Path) -> None:
    x, y = mlsec.datasets.mnist_sample()
    data = tmp_path / "data.npz"
    np.savez(data, x=x[:100].numpy(), y=y[:100].numpy())
    port = free_port()
    procs = []
    for rank, seed in ((0, "0"), (1, "1")):
        env = {
            **ENV,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        command = [sys.executable, "-m", "mlsec", *cli_args(data, tmp_path / "run", "--seed", seed)]
        procs.append(
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        )
    stderr = []
    for proc in procs:
        stderr.append(proc.communicate(timeout=120)[1].decode().strip().splitlines())
        assert proc.returncode == 2
    # Rank 0 says it in one line; rank 1 stops silently.
    assert len(stderr[0]) == 1 and "ranks were given different arguments" in stderr[0][0]
    assert stderr[1] == []
    assert not (tmp_path / "run").exists()
