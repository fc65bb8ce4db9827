"""``mlsec train``: adversarial training of a user's model from the command line."""

from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from torch import nn

from mlsec.auditing.run import audit
from mlsec.auditing.suite import load_suite
from mlsec.cli.common import device_from, float_list, print_notes, proper_fraction
from mlsec.cli.options import FLAGS, apply_normalize, parse_normalize
from mlsec.cli.tables import print_strength_notes, robust_table
from mlsec.cli.train_record import architecture, audit_hint, closing_line, summary
from mlsec.core import distributed
from mlsec.core.distributed import Group
from mlsec.core.files import write_atomic
from mlsec.core.text import printable
from mlsec.core.threat import NORMS
from mlsec.defenses.training import (
    METHODS,
    RUN_FILES,
    CatastrophicOverfittingWarning,
    TrainConfig,
    check_folder,
    save_weights,
)
from mlsec.errors import InputError
from mlsec.io import load_data, load_model

__all__ = ["add_parser", "run"]

# What the command writes into --out after training.
_OUTPUTS = ("model.safetensors", "model.pt", "audit.json", "train.json")

# Options that belong to some methods only, and the methods they belong to.
_METHOD_OPTIONS = {
    "steps": ("pgd", "trades"),
    "step_size": ("pgd", "trades"),
    "alpha": ("fast",),
    "collapse_drop": ("fast",),
    "beta": ("trades",),
    "sigma": ("gaussian",),
    "kappa": ("ibp",),
    "train_eps_factor": ("ibp",),
}


def add_parser(sub: Any) -> None:
    """Add the ``train`` subcommand to the ``mlsec`` parser."""
    parser = sub.add_parser(
        "train",
        help="adversarial training (PGD-AT, Fast-AT, TRADES) or for certificates (gaussian, ibp)",
        description="Train a model adversarially. Each epoch logs clean and PGD accuracy on "
        "held-out data to DIR/log.jsonl and writes DIR/checkpoint.safetensors; --resume "
        "continues an interrupted run exactly. The final weights (DIR/model.safetensors) are "
        "audited with the quick suite. Exit codes: 0 ok, 2 bad usage or input, 3 internal error.",
    )
    _add_model_options(parser.add_argument_group("model and data"))
    _add_method_options(parser.add_argument_group("method"))
    _add_loop_options(parser.add_argument_group("training"))
    _add_output_options(parser.add_argument_group("output"))


def _add_model_options(group: Any) -> None:
    group.add_argument(
        "--model",
        required=True,
        help="module:function returning the (untrained or pre-trained) model, a weights file "
        "with --arch, a TorchScript file, or a bundled model name to fine-tune",
    )
    group.add_argument("--arch", default=None, help="module:factory for a weights file")
    group.add_argument(
        "--trust-pickle", action="store_true", help="allow a pickled whole model (runs its code)"
    )
    group.add_argument(
        "--data",
        required=True,
        help="training data: an .npz with x and y, an image folder, or module:function",
    )
    group.add_argument(
        "--val",
        default=None,
        help="held-out data for the per-epoch evaluation and the final audit (default: a "
        "seeded --val-split of --data)",
    )
    group.add_argument(
        "--val-split",
        type=proper_fraction,
        default=0.1,
        metavar="F",
        help="hold out this fraction of --data when --val is not given (default 0.1; 0: none)",
    )
    group.add_argument("--normalize", default=None, metavar="MEAN,STD", help="as in mlsec audit")
    group.add_argument(
        "--bounds", type=float_list, default=None, metavar="LO,HI", help="input range (0,1)"
    )


def _add_method_options(group: Any) -> None:
    group.add_argument("--method", choices=sorted(METHODS), default="pgd")
    group.add_argument("--eps", type=float, default=0.3, help="training budget (default 0.3)")
    group.add_argument("--norm", choices=list(NORMS), default="linf")
    group.add_argument("--steps", type=int, default=None, help="PGD steps (pgd, trades; 10)")
    group.add_argument(
        "--step-size", type=float, default=None, help="PGD step (default 2.5 * eps / steps)"
    )
    group.add_argument("--alpha", type=float, default=None, help="fast: FGSM step (1.25 * eps)")
    group.add_argument(
        "--collapse-drop",
        type=float,
        default=None,
        help="fast: drop in held-out PGD accuracy that counts as catastrophic overfitting (0.2)",
    )
    group.add_argument("--beta", type=float, default=None, help="trades: KL weight (default 6)")
    group.add_argument("--sigma", type=float, default=None, help="gaussian: noise level (0.25)")
    group.add_argument("--kappa", type=float, default=None, help="ibp: final clean weight (0.5)")
    group.add_argument(
        "--train-eps-factor", type=float, default=None, help="ibp: bounds at this x eps (1)"
    )


def _add_loop_options(group: Any) -> None:
    group.add_argument("--epochs", type=int, default=10)
    group.add_argument("--batch-size", type=int, default=128)
    group.add_argument("--optimizer", choices=["sgd", "adam"], default="adam")
    group.add_argument("--lr", type=float, default=1e-3)
    group.add_argument("--momentum", type=float, default=0.9)
    group.add_argument("--weight-decay", type=float, default=0.0)
    group.add_argument(
        "--schedule",
        default="cosine",
        help="constant, cosine, linear, cyclic or step:E1,E2 (lr x 0.1 after those epochs)",
    )
    group.add_argument("--eps-ramp", type=int, default=0, help="epochs to ramp eps up from 0")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--eval-steps", type=int, default=10, help="PGD steps of the evaluation")
    group.add_argument("--eval-size", type=int, default=1000, help="held-out samples per epoch")
    group.add_argument(
        "--keep", choices=["last", "best"], default="last", help="final weights (default last)"
    )
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")


def _add_output_options(group: Any) -> None:
    group.add_argument("--out", type=Path, required=True, metavar="DIR", help="the run's folder")
    group.add_argument("--resume", action="store_true", help="continue the run in --out")
    group.add_argument("--no-audit", action="store_true", help="skip the final quick-suite audit")
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bars or lines")
    group.add_argument("--no-color", action="store_true", help="plain text output")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")


def _method(args: argparse.Namespace) -> Any:
    for option, methods in _METHOD_OPTIONS.items():
        if getattr(args, option) is not None and args.method not in methods:
            flag = "--" + option.replace("_", "-")
            raise InputError(
                f"{flag} applies to --method {' or '.join(methods)}, not {args.method}"
            )
    params: dict[str, Any] = {"eps": args.eps, "norm": args.norm}
    if args.bounds is not None:
        if len(args.bounds) != 2 or args.bounds[0] >= args.bounds[1]:
            raise InputError(f"--bounds must be LOW,HIGH with LOW < HIGH (got {args.bounds})")
        params["bounds"] = (args.bounds[0], args.bounds[1])
    params.update(
        {
            option: getattr(args, option)
            for option, methods in _METHOD_OPTIONS.items()
            if args.method in methods and getattr(args, option) is not None
        }
    )
    try:
        return METHODS[args.method](**params)
    except InputError as error:
        if error.subject:  # named by its flag where the command's errors are printed
            raise
        raise InputError(f"--method {args.method}: {error}") from None


def _split(
    x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
    if fraction == 0:
        return (x, y), None
    held = max(1, round(fraction * x.shape[0]))
    if held >= x.shape[0]:
        raise InputError(f"--val-split {fraction:g} leaves no training data of {x.shape[0]}")
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    return (x[order[held:]], y[order[held:]]), (x[order[:held]], y[order[:held]])


@dataclass
class _Inputs:
    """What the options load: the model to train, its data and held-out data, and their notes."""

    trained: nn.Module  # the user's model: its weights are saved
    model: nn.Module  # what trains: ``trained``, normalized inside when --normalize is given
    model_name: str
    data_name: str
    train_data: tuple[torch.Tensor, torch.Tensor]
    held_out: tuple[torch.Tensor, torch.Tensor] | None
    val_name: str
    notes: list[str]


def _config(args: argparse.Namespace) -> TrainConfig:
    try:
        return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    except InputError as error:
        if error.subject:  # named by its flag where the command's errors are printed
            raise
        option = str(error).split(" ", 1)[0].replace("_", "-")
        raise InputError(f"--{option}: {error}") from None


def _load(args: argparse.Namespace) -> _Inputs:
    # Seeded before the model is built: a module:function model's initial weights are random.
    torch.manual_seed(args.seed)
    trained, model_name, notes = load_model(
        args.model, arch=args.arch, trust_pickle=args.trust_pickle, terms=FLAGS
    )
    samples, data_name, data_notes = load_data(args.data)
    x, y = samples.tensors()  # training keeps its data in memory
    held_out: tuple[torch.Tensor, torch.Tensor] | None
    if args.val is not None:
        train_data = (x, y)
        val_samples, val_name, val_notes = load_data(args.val, subject="val")
        held_out = val_samples.tensors()
        data_notes += val_notes
    else:
        train_data, held_out = _split(x, y, args.val_split, args.seed)
        val_name = f"{data_name} (held-out {args.val_split:g})"
    model = trained
    if args.normalize is not None:
        mean, std = parse_normalize(args.normalize)
        model = apply_normalize(trained, mean, std, channels=x.shape[1])
    return _Inputs(
        trained=trained,
        model=model,
        model_name=model_name,
        data_name=data_name,
        train_data=train_data,
        held_out=held_out,
        val_name=val_name,
        notes=[*notes, *data_notes],
    )


def _fit(
    args: argparse.Namespace, err: Console, method: Any, config: TrainConfig, inputs: _Inputs
) -> tuple[Any, float]:
    """Train ``inputs.model`` in place; returns the method's result and the seconds it took."""
    if not args.quiet:
        err.print(
            f"training {escape(printable(inputs.model_name))} on "
            f"{escape(printable(inputs.data_name))} ({inputs.train_data[0].shape[0]} samples) "
            f"with {method.name}: {escape(repr(method))}",
            highlight=False,
        )
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CatastrophicOverfittingWarning)
        result = method.fit(
            inputs.train_data,
            model=inputs.model,
            config=config,
            held_out=inputs.held_out,
            folder=args.out,
            resume=args.resume,
            progress=not args.quiet,
            console=err,
        )
    seconds = time.perf_counter() - start
    if args.quiet:
        for caught_warning in caught:
            message = str(caught_warning.message)
            err.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False)
    return result, seconds


def _final_audit(
    args: argparse.Namespace,
    console: Console,
    err: Console,
    method: Any,
    inputs: _Inputs,
    device: torch.device,
) -> dict[str, Any]:
    """Audit the trained model on the held-out data with the quick suite at thirds of eps."""
    assert inputs.held_out is not None
    eps = method.eps
    suite = load_suite("quick").with_overrides(
        eps=[eps / 3, 2 * eps / 3, eps], norm=method.norm, bounds=method.bounds
    )
    report = audit(
        inputs.model.eval().to(device),
        inputs.held_out,
        suite=suite,
        progress=not (args.quiet or args.no_progress),
        console=err,
        model_name=f"{inputs.model_name} ({method.name}-trained)",
        data_name=inputs.val_name,
    )
    if distributed.current().is_main:
        write_atomic(args.out / "audit.json", report.to_json() + "\n")
    if not args.quiet:
        console.print(robust_table(report))
        print_strength_notes(console, [report])
        for warning in report.warnings:
            console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False)
    return {
        "clean_accuracy": report.clean_accuracy,
        "worst_case": {f"{e:g}": report.worst_case[e] for e in report.eps},
    }


def _join(args: argparse.Namespace, device: torch.device) -> tuple[Group, torch.device]:
    """Under torchrun, join the job (a GPU per rank from LOCAL_RANK); the ranks' arguments agree."""
    group = distributed.current()
    if distributed.launched():
        group, device = distributed.start(args.device)
    if group.active:
        options = {name: str(value) for name, value in sorted(vars(args).items())}
        distributed.agree(group, "arguments", options)
    return group, device


def _write_outputs(
    args: argparse.Namespace,
    console: Console,
    method: Any,
    inputs: _Inputs,
    result: Any,
    record: dict[str, Any],
) -> None:
    """Rank 0's part after training: the weights, ``train.json`` and the closing lines."""
    trained = inputs.trained
    weights = args.out / "model.safetensors"
    save_weights(trained, weights, {"method": method.name, "epoch": str(result.kept)})
    if isinstance(trained, torch.jit.ScriptModule):
        torch.jit.save(trained, str(args.out / "model.pt"))
    arch = architecture(args.model, args.arch, trained)
    record.update(weights=str(weights), arch=arch)
    write_atomic(args.out / "train.json", json.dumps(record, indent=2, default=str) + "\n")
    line = closing_line(method.name, result, record["config"]["eval_steps"], record["seconds"])
    console.print(line, highlight=False, markup=False)
    hint = audit_hint(args.out, weights, arch, trained, args.normalize)
    console.print(f"weights: {weights}; audit them with: {hint}", highlight=False, markup=False)


def run(args: argparse.Namespace) -> int:
    """Run ``mlsec train``; returns the exit code.

    Under ``torchrun`` every rank trains its share of each batch (DistributedDataParallel); rank
    0 alone prints and writes ``--out``.
    """
    method = _method(args)
    config = _config(args)
    if not args.out.resolve().parent.is_dir():
        raise InputError(f"--out: folder {args.out.resolve().parent} does not exist")
    group, device = _join(args, device_from(args.device))
    args.quiet = args.quiet or not group.is_main
    console = Console(no_color=args.no_color, highlight=not args.no_color, soft_wrap=True)
    # stderr as it is: a terminal gets progress bars, a pipe or a file one line per epoch.
    err = Console(stderr=True, no_color=args.no_color, soft_wrap=True, quiet=not group.is_main)
    # Before any work: the run's files, and the outputs written after training, are not folders.
    outputs = (*RUN_FILES, *_OUTPUTS)
    distributed.gather_results(
        group, lambda: check_folder(args.out, resume=args.resume, files=outputs)
    )
    inputs = _load(args)
    print_notes(err, inputs.notes, quiet=args.quiet)
    if inputs.held_out is None and not args.quiet:
        err.print(
            "[bold yellow]warning:[/] no held-out data (--val-split 0): nothing is evaluated "
            "per epoch, and Fast-AT's catastrophic-overfitting check is off",
            highlight=False,
        )
    inputs.model = inputs.model.to(device)
    result, seconds = _fit(args, err, method, config, inputs)
    inputs.trained.cpu()
    record = summary(args, method, config, inputs, result, seconds)
    if inputs.held_out is not None and not args.no_audit and method.eps > 0:
        # Every rank: the audit may itself share its samples out over the ranks.
        record["audit"] = _final_audit(args, console, err, method, inputs, device)
    if group.is_main:
        _write_outputs(args, console, method, inputs, result, record)
    return 0
