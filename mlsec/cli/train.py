"""``mlsec train``: adversarial training of a user's model from the command line."""

from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from torch import nn

from mlsec import zoo
from mlsec.auditing.run import audit
from mlsec.auditing.suite import load_suite
from mlsec.cli.common import device_from, float_list, percent, print_notes, printable, robust_table
from mlsec.core.files import write_atomic
from mlsec.defenses.training import (
    METHODS,
    RUN_FILES,
    CatastrophicOverfittingWarning,
    TrainConfig,
    check_folder,
    save_weights,
)
from mlsec.errors import InputError
from mlsec.io.loading import apply_normalize, load_data, load_model, parse_normalize

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
}


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {value:g}")
    return value


def add_parser(sub: Any) -> None:
    """Add the ``train`` subcommand to the ``mlsec`` parser."""
    run_parser = sub.add_parser(
        "train",
        help="adversarial training (PGD-AT, Fast-AT, TRADES) of a model",
        description="Train a model adversarially. Each epoch logs clean and PGD accuracy on "
        "held-out data to DIR/log.jsonl and writes DIR/checkpoint.safetensors; --resume "
        "continues an interrupted run exactly. The final weights (DIR/model.safetensors) are "
        "audited with the quick suite. Exit codes: 0 ok, 2 bad usage or input, 3 internal error.",
    )
    what = run_parser.add_argument_group("model and data")
    what.add_argument(
        "--model",
        required=True,
        help="module:function returning the (untrained or pre-trained) model, a weights file "
        "with --arch, a TorchScript file, or a bundled model name to fine-tune",
    )
    what.add_argument("--arch", default=None, help="module:factory for a weights file")
    what.add_argument(
        "--trust-pickle", action="store_true", help="allow a pickled whole model (runs its code)"
    )
    what.add_argument(
        "--data",
        required=True,
        help="training data: an .npz with x and y, an image folder, or module:function",
    )
    what.add_argument(
        "--val",
        default=None,
        help="held-out data for the per-epoch evaluation and the final audit (default: a "
        "seeded --val-split of --data)",
    )
    what.add_argument(
        "--val-split",
        type=_fraction,
        default=0.1,
        metavar="F",
        help="hold out this fraction of --data when --val is not given (default 0.1; 0: none)",
    )
    what.add_argument("--normalize", default=None, metavar="MEAN,STD", help="as in mlsec audit")
    what.add_argument(
        "--bounds", type=float_list, default=None, metavar="LO,HI", help="input range (0,1)"
    )

    method = run_parser.add_argument_group("method")
    method.add_argument("--method", choices=sorted(METHODS), default="pgd")
    method.add_argument("--eps", type=float, default=0.3, help="training budget (default 0.3)")
    method.add_argument("--norm", choices=["linf", "l2"], default="linf")
    method.add_argument("--steps", type=int, default=None, help="PGD steps (pgd, trades; 10)")
    method.add_argument(
        "--step-size", type=float, default=None, help="PGD step (default 2.5 * eps / steps)"
    )
    method.add_argument("--alpha", type=float, default=None, help="fast: FGSM step (1.25 * eps)")
    method.add_argument(
        "--collapse-drop",
        type=float,
        default=None,
        help="fast: drop in held-out PGD accuracy that counts as catastrophic overfitting (0.2)",
    )
    method.add_argument("--beta", type=float, default=None, help="trades: KL weight (default 6)")

    loop = run_parser.add_argument_group("training")
    loop.add_argument("--epochs", type=int, default=10)
    loop.add_argument("--batch-size", type=int, default=128)
    loop.add_argument("--optimizer", choices=["sgd", "adam"], default="adam")
    loop.add_argument("--lr", type=float, default=1e-3)
    loop.add_argument("--momentum", type=float, default=0.9)
    loop.add_argument("--weight-decay", type=float, default=0.0)
    loop.add_argument(
        "--schedule",
        default="cosine",
        help="constant, cosine, linear, cyclic or step:E1,E2 (lr x 0.1 after those epochs)",
    )
    loop.add_argument("--eps-ramp", type=int, default=0, help="epochs to ramp eps up from 0")
    loop.add_argument("--seed", type=int, default=0)
    loop.add_argument("--eval-steps", type=int, default=10, help="PGD steps of the evaluation")
    loop.add_argument("--eval-size", type=int, default=1000, help="held-out samples per epoch")
    loop.add_argument(
        "--keep", choices=["last", "best"], default="last", help="final weights (default last)"
    )
    loop.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")

    out = run_parser.add_argument_group("output")
    out.add_argument("--out", type=Path, required=True, metavar="DIR", help="the run's folder")
    out.add_argument("--resume", action="store_true", help="continue the run in --out")
    out.add_argument("--no-audit", action="store_true", help="skip the final quick-suite audit")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bars or lines")
    out.add_argument("--no-color", action="store_true", help="plain text output")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")


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
        raise InputError(f"--method {args.method}: {error}") from None


def _architecture(spec: str, arch: str | None, model: nn.Module) -> str | None:
    """The --arch that rebuilds ``model`` for its saved weights, if there is one."""
    if isinstance(model, torch.jit.ScriptModule):
        return None
    if arch is not None:
        return arch
    if spec in zoo.list_models():
        return zoo.architecture(spec)
    return spec if ":" in spec else None


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


def run(args: argparse.Namespace) -> int:
    """Run ``mlsec train``; returns the exit code."""
    console = Console(no_color=args.no_color, highlight=not args.no_color, soft_wrap=True)
    err = Console(stderr=True, no_color=args.no_color, soft_wrap=True)
    method = _method(args)
    try:
        config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    except InputError as error:
        option = str(error).split(" ", 1)[0].replace("_", "-")
        raise InputError(f"--{option}: {error}") from None
    if not args.out.resolve().parent.is_dir():
        raise InputError(f"--out: folder {args.out.resolve().parent} does not exist")
    device = device_from(args.device)

    # Before any work: the run's files, and the outputs written after training, are not folders.
    check_folder(args.out, resume=args.resume, files=(*RUN_FILES, *_OUTPUTS))
    # Seeded before the model is built: a module:function model's initial weights are random.
    torch.manual_seed(args.seed)
    model, model_name, notes = load_model(
        args.model, arch=args.arch, trust_pickle=args.trust_pickle
    )
    (x, y), data_name, data_notes = load_data(args.data)
    if args.val is not None:
        train_data = (x, y)
        held_out: tuple[torch.Tensor, torch.Tensor] | None
        held_out, val_name, val_notes = load_data(args.val)
        data_notes += val_notes
    else:
        train_data, held_out = _split(x, y, args.val_split, args.seed)
        val_name = f"{data_name} (held-out {args.val_split:g})"
    trained = model
    if args.normalize is not None:
        mean, std = parse_normalize(args.normalize)
        model = apply_normalize(model, mean, std, channels=x.shape[1])
    print_notes(err, [*notes, *data_notes], quiet=args.quiet)
    if held_out is None and not args.quiet:
        err.print(
            "[bold yellow]warning:[/] no held-out data (--val-split 0): nothing is evaluated "
            "per epoch, and Fast-AT's catastrophic-overfitting check is off",
            highlight=False,
        )
    model = model.to(device)
    if not args.quiet:
        err.print(
            f"training {escape(printable(model_name))} on {escape(printable(data_name))} "
            f"({train_data[0].shape[0]} samples) with {method.name}: {escape(repr(method))}",
            highlight=False,
        )
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CatastrophicOverfittingWarning)
        result = method.fit(
            train_data,
            model=model,
            config=config,
            held_out=held_out,
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

    trained = trained.cpu()
    weights = args.out / "model.safetensors"
    save_weights(trained, weights, {"method": method.name, "epoch": str(result.kept)})
    if isinstance(trained, torch.jit.ScriptModule):
        torch.jit.save(trained, str(args.out / "model.pt"))
    arch = _architecture(args.model, args.arch, trained)
    summary: dict[str, Any] = {
        "model": model_name,
        "data": data_name,
        "held_out": val_name if held_out is not None else None,
        "method": method.name,
        "params": method.params(),
        "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
        "normalize": args.normalize,
        "epochs_run": len(result.history),
        "kept_epoch": result.kept,
        "best_epoch": result.best_epoch,
        "collapsed_at": result.collapsed_at,
        "seconds": seconds,
        "weights": str(weights),
        "arch": arch,
        "final": result.history[-1] if result.history else None,
    }
    model = model.eval()
    if held_out is not None and not args.no_audit and method.eps > 0:
        eps = method.eps
        suite = load_suite("quick").with_overrides(
            eps=[eps / 3, 2 * eps / 3, eps], norm=method.norm, bounds=method.bounds
        )
        report = audit(
            model.to(device),
            held_out,
            suite=suite,
            progress=not (args.quiet or args.no_progress),
            console=err,
            model_name=f"{model_name} ({method.name}-trained)",
            data_name=val_name,
        )
        write_atomic(args.out / "audit.json", report.to_json() + "\n")
        summary["audit"] = {
            "clean_accuracy": report.clean_accuracy,
            "worst_case": {f"{e:g}": report.worst_case[e] for e in report.eps},
        }
        if not args.quiet:
            console.print(robust_table(report))
            for warning in report.warnings:
                console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False)
    write_atomic(args.out / "train.json", json.dumps(summary, indent=2, default=str) + "\n")
    last = result.history[-1] if result.history else None
    line = f"{method.name} training: {len(result.history)} epochs in {seconds:.0f} s"
    if last is not None and last["clean_accuracy"] is not None:
        kept = result.history[result.kept - 1]
        line += (
            f"; epoch {result.kept} kept: held-out clean {percent(kept['clean_accuracy'])}, "
            f"PGD-{config.eval_steps} {percent(kept['robust_accuracy'])}"
        )
    console.print(line, highlight=False, markup=False)
    audit_hint = f"mlsec audit --model {weights}"
    if arch is not None:
        audit_hint += f" --arch {arch}"
    elif isinstance(trained, torch.jit.ScriptModule):
        audit_hint = f"mlsec audit --model {args.out / 'model.pt'}"
    if args.normalize is not None:
        audit_hint += f" --normalize {args.normalize}"
    if arch is None and not isinstance(trained, torch.jit.ScriptModule):
        audit_hint += " --arch MODULE:FACTORY"
    console.print(
        f"weights: {weights}; audit them with: {audit_hint}", highlight=False, markup=False
    )
    return 0
