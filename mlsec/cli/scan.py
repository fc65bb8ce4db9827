"""``mlsec scan``: look for a planted backdoor in a model (Neural Cleanse, ART's poison detectors).

The parser is built one argument group at a time; :func:`run` loads the model and data, scans the
model with :func:`mlsec.auditing.scan.scan`, writes the reports and prints the per-class table.
Exit codes: 0 ok, 1 a class is flagged under ``--fail-on-backdoor``, 2 bad usage or input.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mlsec import zoo
from mlsec.auditing.scan import ScanReport, scan
from mlsec.cli.common import device_from, positive_int, print_notes
from mlsec.cli.options import FLAGS, add_model_source_options
from mlsec.cli.report_files import (
    add_report_options,
    check_report_files,
    checked_paths,
    report_files,
    write_reports,
)
from mlsec.core.text import printable
from mlsec.defenses.detection.neural_cleanse import NeuralCleanse
from mlsec.defenses.detection.trigger import PatchTrigger
from mlsec.io import load_data, load_model

__all__ = ["DEFAULT_MODEL", "add_parser", "run"]

# What a plain ``mlsec scan`` looks at: the bundled model with a planted trigger.
DEFAULT_MODEL = "mnist-cnn-badnets"
_DEFAULTS = NeuralCleanse()


def add_parser(sub: Any) -> None:
    """Add the ``scan`` subcommand to the ``mlsec`` parser."""
    parser = sub.add_parser(
        "scan",
        help="look for a planted backdoor (Neural Cleanse, ART's poison detectors)",
        description="Scan a model for a backdoor: reverse-engineer a minimal trigger per class "
        "(Neural Cleanse) and flag classes whose trigger is anomalously small; with "
        "--train-data, also run ART's poison detectors on the training data. Exit codes: 0 "
        "ok, 1 a class is flagged under --fail-on-backdoor, 2 bad usage or input, 3 internal "
        "error, 130 interrupted (Ctrl-C).",
    )
    _add_model_options(parser.add_argument_group("model and data"))
    _add_method_options(parser.add_argument_group("Neural Cleanse"))
    _add_gate_options(parser.add_argument_group("CI gate and reports"))


def _add_model_options(group: Any) -> None:
    add_model_source_options(group, f"the bundled {DEFAULT_MODEL}, which carries a planted trigger")
    group.add_argument(
        "--data",
        default="mnist-sample",
        help="clean images in [0, 1] to stamp reversed triggers on: mnist-sample, an .npz with "
        "x and y, an image folder, or module:function (default: mnist-sample)",
    )
    group.add_argument("--limit", type=positive_int, default=None, help="use the first N samples")
    group.add_argument(
        "--train-data",
        default=None,
        metavar="DATA",
        help="the model's training data (same forms as --data): run ART's spectral-signature "
        "and activation-clustering poison detectors on it",
    )


def _add_method_options(group: Any) -> None:
    group.add_argument(
        "--steps",
        type=positive_int,
        default=_DEFAULTS.steps,
        help=f"optimisation steps, all classes at once (default: {_DEFAULTS.steps})",
    )
    group.add_argument(
        "--batch-size",
        type=positive_int,
        default=_DEFAULTS.batch_size,
        help=f"clean samples per step (default: {_DEFAULTS.batch_size})",
    )
    group.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="seed (default: 0)")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")


def _add_gate_options(group: Any) -> None:
    group.add_argument(
        "--fail-on-backdoor", action="store_true", help="exit 1 when a class is flagged"
    )
    add_report_options(group, suite=False)


def _known_trigger(spec: str) -> PatchTrigger | None:
    """The trigger planted in a bundled model, when it carries one."""
    return zoo.MODELS.get(spec).backdoor if spec in zoo.list_models() else None


def run(args: argparse.Namespace) -> int:
    """Run ``mlsec scan``; returns the exit code."""
    method = NeuralCleanse(steps=args.steps, batch_size=args.batch_size, seed=args.seed)
    device = device_from(args.device)
    console = Console(no_color=args.no_color, highlight=not args.no_color, soft_wrap=True)
    err = Console(stderr=True, no_color=args.no_color)
    files = report_files(checked_paths(args), args.out, "", several=False, suite=False)
    check_report_files(files, args.out)
    spec = args.model or DEFAULT_MODEL
    model, model_name, notes = load_model(
        spec, arch=args.arch, trust_pickle=args.trust_pickle, terms=FLAGS
    )
    samples, data_name, data_notes = load_data(args.data)
    if args.limit is not None:
        samples = samples.subset(range(min(args.limit, len(samples))))
    train = None
    train_name = None
    if args.train_data is not None:
        loaded, train_name, train_notes = load_data(args.train_data, subject="train_data")
        train = loaded.tensors()
        data_notes = [*data_notes, *train_notes]
    print_notes(err, [*notes, *data_notes], quiet=args.quiet)
    report = scan(
        model.to(device),
        samples.tensors(),
        method=method,
        train_data=train,
        trigger=_known_trigger(spec),
        progress=not (args.quiet or args.no_progress),
        console=err,
        model_name=model_name,
        data_name=data_name,
        train_data_name=train_name or "train-data",
    )
    written = write_reports(report, files, None)
    _print(console, report, written, quiet=args.quiet)
    if args.fail_on_backdoor and not report.passed:
        return 1
    return 0


def _table(report: ScanReport) -> Table:
    table = Table(title=f"mlsec scan: {printable(report.model)} on {printable(report.data)}")
    table.add_column("class", justify="right")
    table.add_column("mask L1", justify="right")
    table.add_column("anomaly index", justify="right")
    table.add_column("attack success", justify="right")
    if report.trigger is not None:
        table.add_column("IoU", justify="right")
    table.add_column("flagged")
    for r in report.classes:
        cells = [str(r.label), f"{r.l1:.1f}", f"{r.anomaly_index:.2f}", f"{r.attack_success:.1%}"]
        if report.trigger is not None:
            cells.append("—" if r.iou is None else f"{r.iou:.2f}")
        cells.append("[bold red]yes[/]" if r.flagged else "no")
        table.add_row(*cells, style="red" if r.flagged else None)
    return table


def _print(console: Console, report: ScanReport, written: list[Path], *, quiet: bool) -> None:
    """The table (unless quiet), the detectors, the verdict line and the files written."""
    if not quiet:
        console.print(_table(report))
        for found in report.detectors:
            suspects = ", ".join(str(k) for k in found["suspect_classes"]) or "none"
            console.print(
                f"ART {found['detector']}: flagged {found['flagged']} training samples "
                f"({found['fraction']:.1%}); suspect classes: {suspects}",
                highlight=False,
                markup=False,
            )
    name = printable(report.model)
    if report.passed:
        console.print(f"[green]PASS[/] {name}: no class flagged as a backdoor target")
    else:
        listed = ", ".join(str(k) for k in report.flagged_classes)
        console.print(
            f"[bold red]BACKDOOR SUSPECTED[/] {name}: class {listed} flagged (anomaly index > "
            f"{report.config['anomaly_threshold']:g})"
        )
    if written and not quiet:
        console.print(
            "reports: " + ", ".join(printable(p) for p in written), highlight=False, markup=False
        )
