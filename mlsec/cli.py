"""The ``mlsec`` command line: ``mlsec audit`` and ``mlsec attacks``.

Exit codes: 0 success, 1 a robustness threshold failed, 2 bad usage or input, 3 internal error.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from mlsec import attacks as attack_registry
from mlsec.audit import DEFAULT_EPS, AuditReport, audit
from mlsec.errors import InputError
from mlsec.loading import load_data, load_model

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors in the house style: one line, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"mlsec: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _float_list(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mlsec", description="Adversarial-robustness audits for PyTorch models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("audit", help="robust accuracy of a model under attacks and budgets")
    run.add_argument(
        "--model",
        default="mnist-cnn",
        help="a bundled model name or module:function returning an nn.Module (default: mnist-cnn)",
    )
    run.add_argument(
        "--data",
        default="mnist-sample",
        help="mnist-sample or module:function returning a Dataset, a DataLoader or "
        "an (x, y) pair of tensors (default: mnist-sample)",
    )
    run.add_argument(
        "--attacks",
        default="fgsm,pgd",
        help="comma-separated registered attacks (default: fgsm,pgd; see mlsec attacks)",
    )
    run.add_argument(
        "--eps",
        type=_float_list,
        default=list(DEFAULT_EPS),
        help="comma-separated budgets in input units (default: 0.1,0.2,0.3)",
    )
    run.add_argument("--norm", choices=["linf", "l2"], default="linf")
    run.add_argument("--steps", type=_positive_int, default=40, help="PGD steps (default: 40)")
    run.add_argument("--restarts", type=_positive_int, default=1, help="PGD restarts (default: 1)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument(
        "--bounds",
        type=_float_list,
        default=[0.0, 1.0],
        help="LOW,HIGH of the input range (default: 0,1)",
    )
    run.add_argument("--batch-size", type=_positive_int, default=500)
    run.add_argument(
        "--limit", type=_positive_int, default=None, help="audit only the first N samples"
    )
    run.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    run.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the results as JSON to PATH",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    sub.add_parser("attacks", help="list the registered attacks")
    return parser


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(
            f"--device: unknown device {name!r}; use cpu, cuda, cuda:N or auto"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available; use --device cpu")
    return device


def _check_writable(path: Path) -> None:
    if path.is_dir():
        raise InputError(f"--json: {path} is a folder; give a file path such as {path}/report.json")
    parent = path.resolve().parent
    if not parent.is_dir():
        raise InputError(f"--json: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"--json: folder {parent} is not writable")


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so a crash leaves no half file."""
    fd, tmp = tempfile.mkstemp(dir=path.resolve().parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _colour(value: float, clean: float) -> str:
    ratio = value / clean if clean > 0 else 0.0
    return "green" if ratio >= 0.8 else "yellow" if ratio >= 0.4 else "red"


def _table(report: AuditReport) -> Table:
    table = Table(
        title=f"Robust accuracy of {report.model} on {report.data} "
        f"({report.n} samples, {report.norm})",
        caption=f"clean accuracy {_percent(report.clean_accuracy)}",
    )
    table.add_column("attack", style="bold")
    for eps in report.eps:
        table.add_column(f"eps {eps:g}", justify="right")
    table.add_column("time", justify="right")
    for name in report.attacks:
        cells = [
            f"[{_colour(acc, report.clean_accuracy)}]{_percent(acc)}"
            for acc in (report.robust_accuracy(name, eps) for eps in report.eps)
        ]
        table.add_row(name, *cells, f"{report.seconds(name):.1f} s")
    table.add_section()
    worst = [
        f"[{_colour(acc, report.clean_accuracy)}]{_percent(acc)}"
        for acc in (report.worst_case[eps] for eps in report.eps)
    ]
    table.add_row("worst case", *worst, f"{sum(report.seconds(a) for a in report.attacks):.1f} s")
    return table


def _audit(args: argparse.Namespace) -> int:
    if args.json is not None:
        _check_writable(args.json)
    if len(args.bounds) != 2 or args.bounds[0] >= args.bounds[1]:
        raise InputError(f"--bounds must be LOW,HIGH with LOW < HIGH (got {args.bounds})")
    if any(e < 0 for e in args.eps):
        raise InputError(f"--eps values must be >= 0 (got {','.join(f'{e:g}' for e in args.eps)})")
    device = _device(args.device)
    # The user's modules load first: they may register attacks of their own.
    model, model_name = load_model(args.model)
    (x, y), data_name = load_data(args.data)
    common = {"norm": args.norm, "bounds": tuple(args.bounds), "seed": args.seed}
    # --steps and --restarts reach every attack that has such a parameter.
    iterative = {"steps": args.steps, "restarts": args.restarts}
    chosen = []
    for name in [part.strip().lower() for part in args.attacks.split(",") if part.strip()]:
        fields = {field.name for field in dataclasses.fields(attack_registry.get(name))}
        params = {k: v for k, v in iterative.items() if k in fields}
        chosen.append(attack_registry.create(name, eps=min(args.eps), **common, **params))
    if not chosen:
        raise InputError("--attacks: give at least one attack")
    if args.limit is not None:
        x, y = x[: args.limit], y[: args.limit]
    model = model.to(device)

    report = audit(
        model,
        (x, y),
        attacks=chosen,
        eps=args.eps,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        model_name=model_name,
        data_name=data_name,
    )
    console = Console()
    console.print(_table(report))
    for warning in report.warnings:
        console.print(f"[bold yellow]warning:[/] {warning}")
    if args.json is not None:
        _write_atomic(args.json, report.to_json() + "\n")
        console.print(f"JSON written to {args.json}")
    return 0


def _list_attacks() -> int:
    table = Table(title="Registered attacks")
    table.add_column("name", style="bold")
    table.add_column("class")
    table.add_column("parameters")
    for name in attack_registry.list_attacks():
        cls = attack_registry.get(name)
        params = ", ".join(field.name for field in dataclasses.fields(cls))
        table.add_row(name, cls.__name__, params)
    Console().print(table)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mlsec`` command line; returns the exit code."""
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "audit":
            return _audit(args)
        return _list_attacks()
    except InputError as error:
        print(f"mlsec: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mlsec: interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug in mlsec (or the user's model): keep the traceback, not exit 1
        traceback.print_exc()
        print("mlsec: internal error (the traceback above says where); exit 3", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
