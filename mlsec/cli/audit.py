"""``mlsec audit``: robust accuracy of one or more models under a suite of attacks.

The parser is built one argument group at a time; :func:`run` loads the models and data, audits
each model with :func:`mlsec.auditing.run.audit`, writes the reports and prints the tables.
``--defense`` hands the whole command to :mod:`mlsec.cli.defend`.
"""

from __future__ import annotations

import argparse
import math
import shlex
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from mlsec.auditing.report import AuditReport
from mlsec.auditing.run import audit
from mlsec.auditing.suite import BUILTIN_SUITES, Suite, load_suite, parse_eps
from mlsec.auditing.thresholds import Threshold, parse_thresholds
from mlsec.cli import defend
from mlsec.cli.certify import (
    add_certify_options,
    certify_plan,
    cpu_limit,
    default_models,
    smoothing_suite,
    with_notes,
)
from mlsec.cli.common import device_from, float_list, positive_int, print_notes
from mlsec.cli.options import (
    FLAGS,
    add_data_options,
    add_model_source_options,
    apply_normalize,
    parse_normalize,
)
from mlsec.cli.privacy import add_privacy_options, check_options, run_privacy
from mlsec.cli.report_files import (
    add_report_options,
    check_report_files,
    checked_paths,
    report_files,
    write_reports,
)
from mlsec.cli.tables import comparison_table, print_strength_notes, robust_table
from mlsec.core.distributed import current
from mlsec.core.text import percent, printable
from mlsec.core.threat import NORMS
from mlsec.errors import InputError
from mlsec.io import image_folder_classes, load_data, load_model

__all__ = ["DEFAULT_MODELS", "add_parser", "run"]

# What a plain ``mlsec audit`` compares: a standard model and its adversarially trained peer.
DEFAULT_MODELS = ("mnist-cnn", "mnist-cnn-pgd")

# The options that only mean something with --defense.
_DEFENSE_ONLY = ("purify_steps", "purify_restarts", "bpda")


def add_parser(sub: Any) -> None:
    """Add the ``audit`` subcommand to the ``mlsec`` parser."""
    parser = sub.add_parser(
        "audit",
        help="robust accuracy of a model under attacks and budgets",
        description="Audit a model's robustness. Exit codes: 0 ok, 1 a threshold failed (or a "
        "warning under --strict), 2 bad usage or input, 3 internal error, 130 interrupted "
        "(Ctrl-C).",
    )
    _add_model_options(parser.add_argument_group("model and data"))
    add_data_options(parser.add_argument_group("data loading (streamed batch by batch)"))
    defend.add_defense_options(parser.add_argument_group("defended model (GAN purifiers)"))
    _add_attack_options(parser.add_argument_group("attacks"))
    add_certify_options(parser.add_argument_group("certification (a lower bound beside attacks)"))
    add_privacy_options(
        parser.add_argument_group("privacy (membership inference, instead of attacks)")
    )
    _add_gate_options(parser.add_argument_group("CI gate"))
    add_report_options(parser.add_argument_group("reports"))


def _add_model_options(group: Any) -> None:
    add_model_source_options(group, "the bundled mnist-cnn and mnist-cnn-pgd, side by side")
    group.add_argument(
        "--data",
        default="mnist-sample",
        help="mnist-sample, an .npz with x and y, an image folder (one subfolder per class), or "
        "module:function returning a Dataset, a DataLoader or (x, y) (default: mnist-sample)",
    )
    group.add_argument(
        "--normalize",
        default=None,
        metavar="MEAN,STD",
        help="the model expects (x - mean) / std: normalize inside the model so eps stays in "
        "input units (per channel: M1,M2,M3,S1,S2,S3)",
    )
    group.add_argument(
        "--bounds",
        type=float_list,
        default=None,
        metavar="LO,HI",
        help="input range (default: 0,1); for negative values write --bounds=-1,1",
    )
    group.add_argument("--limit", type=positive_int, default=None, help="audit the first N samples")


def _eps_list(text: str) -> list[float]:
    try:
        return parse_eps(text)
    except InputError as error:  # argparse would swallow the message of a ValueError
        raise argparse.ArgumentTypeError(error.detail.removeprefix("--eps: ")) from None


def _add_attack_options(group: Any) -> None:
    group.add_argument(
        "--suite",
        default=None,
        help=f"a built-in suite ({', '.join(BUILTIN_SUITES)}) or a TOML file (default: default)",
    )
    group.add_argument(
        "--attacks",
        default=None,
        help="comma-separated registered attacks, chained in this order, instead of a suite",
    )
    group.add_argument(
        "--eps",
        type=_eps_list,
        default=None,
        help="comma-separated budgets in input units, fractions allowed (default: 0.1,0.2,0.3)",
    )
    group.add_argument("--norm", choices=list(NORMS), default=None, help="override the norm")
    group.add_argument("--steps", type=positive_int, default=None, help="override attack steps")
    group.add_argument(
        "--restarts", type=positive_int, default=None, help="override attack restarts"
    )
    group.add_argument("--seed", type=int, default=None, help="override the attacks' seed")
    group.add_argument("--batch-size", type=positive_int, default=500)
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    group.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        metavar="DIR",
        help="record each finished batch in DIR; rerunning the same command resumes",
    )


def _add_gate_options(group: Any) -> None:
    group.add_argument(
        "--fail-under",
        action="append",
        default=[],
        metavar="ATTACK@EPS=MIN",
        help="exit 1 unless robust accuracy after ATTACK (or 'worst', or 'certified' with "
        "--certify) at EPS is >= MIN, e.g. pgd@0.3=0.80; repeat or comma-separate",
    )
    group.add_argument(
        "--max-drop",
        action="append",
        default=[],
        metavar="ATTACK@EPS=DROP",
        help="exit 1 unless clean accuracy minus robust accuracy after ATTACK at EPS is <= DROP",
    )
    group.add_argument("--strict", action="store_true", help="exit 1 when a sanity check warns")
    group.add_argument(
        "--no-checks", action="store_true", help="skip the gradient-masking sanity checks"
    )


def _plan(args: argparse.Namespace) -> Suite:
    """The suite the options describe, with every override applied."""
    if args.attacks is not None and args.suite is not None:
        raise InputError("give --suite or --attacks, not both")
    if args.attacks is not None:
        names = [part.strip().lower() for part in args.attacks.split(",") if part.strip()]
        if not names:
            raise InputError("--attacks: give at least one attack")
        suite = Suite.from_attacks(names)
    else:
        suite = load_suite(args.suite or "default")
    if args.bounds is not None and (len(args.bounds) != 2 or args.bounds[0] >= args.bounds[1]):
        raise InputError(f"--bounds must be LOW,HIGH with LOW < HIGH (got {args.bounds})")
    if args.eps is not None and any(e < 0 or not math.isfinite(e) for e in args.eps):
        raise InputError(f"--eps values must be >= 0 (got {','.join(f'{e:g}' for e in args.eps)})")
    return suite.with_overrides(
        eps=args.eps,
        norm=args.norm,
        bounds=None if args.bounds is None else (args.bounds[0], args.bounds[1]),
        seed=args.seed,
        params={"steps": args.steps, "restarts": args.restarts},
    )


def _thresholds(args: argparse.Namespace) -> list[Threshold]:
    return parse_thresholds(args.fail_under, "min-accuracy") + parse_thresholds(
        args.max_drop, "max-drop"
    )


def _standard_command(args: argparse.Namespace) -> str:
    """``mlsec audit`` with this run's model, data and budgets, and ``--suite standard``."""
    parts = ["mlsec audit"]
    options = ("model", "arch", "data", "normalize", "bounds", "limit")
    for option in options:
        value = getattr(args, option)
        if isinstance(value, list | tuple):
            value = ",".join(f"{v:g}" for v in value)
        if value is not None:
            parts.append(f"--{option} {shlex.quote(str(value))}")
    if args.eps is not None:
        parts.append("--eps " + ",".join(f"{e:g}" for e in args.eps))
    return " ".join([*parts, "--suite standard"])


def run(args: argparse.Namespace) -> int:
    """Run ``mlsec audit``; returns the exit code."""
    check_options(args)  # --privacy and the attack audit's options exclude each other
    if args.privacy:
        return run_privacy(args)
    if args.defense is not None:
        if args.certify is not None:
            raise InputError("--certify does not combine with --defense; audit one or the other")
        return defend.audit_defense(args)
    for option in _DEFENSE_ONLY:
        if getattr(args, option) is not None:
            raise InputError(f"--{option.replace('_', '-')} needs --defense")
    device = device_from(args.device)  # under torchrun: joins the job first
    # Several processes (torchrun): rank 0 alone prints, draws progress and writes reports.
    main = current().is_main
    quiet = args.quiet or not main
    console = Console(
        no_color=args.no_color, highlight=not args.no_color, soft_wrap=True, quiet=not main
    )
    # stderr as it is: a terminal gets progress bars, a pipe or a file one line per stage.
    err = Console(stderr=True, no_color=args.no_color, quiet=not main)
    paths = checked_paths(args) if main else {}
    thresholds = _thresholds(args)
    specs = [args.model] if args.model is not None else list(default_models(args) or DEFAULT_MODELS)
    # The user's modules load first: they may register attacks of their own.
    loaded = [
        load_model(spec, arch=args.arch, trust_pickle=args.trust_pickle, terms=FLAGS)
        for spec in specs
    ]
    samples, data_name, data_notes = load_data(
        args.data, resize=args.resize, center_crop=args.center_crop
    )
    # An image folder's class labels go in the report: they decide what "correct" means.
    classes = image_folder_classes(Path(args.data)) if Path(args.data).is_dir() else None
    plan = smoothing_suite(args, _plan(args))
    certificates = {name: certify_plan(args, name, device) for _, name, _ in loaded}
    limit, limit_note = cpu_limit(args, device)
    several = len(loaded) > 1
    files = {name: report_files(paths, args.out, name, several=several) for _, name, _ in loaded}
    for planned in files.values() if main else ():
        check_report_files(planned, args.out)
    if limit is not None:
        samples = samples.subset(range(min(limit, len(samples))))
    notes = [n for _, _, model_notes in loaded for n in model_notes]
    notes += [n for n in (limit_note, *(c.note for c in certificates.values())) if n]
    print_notes(err, [*notes, *data_notes], quiet=quiet)

    reports: list[AuditReport] = []
    written: list[Path] = []
    for model, model_name, _ in loaded:
        if args.normalize is not None:
            mean, std = parse_normalize(args.normalize)
            channels = samples.get([0])[0].shape[1]
            model = apply_normalize(model, mean, std, channels=channels)
        checkpoint = args.checkpoint
        if several and checkpoint is not None:
            checkpoint = checkpoint / model_name
        report = audit(
            model.to(device),
            samples,
            suite=plan,
            thresholds=thresholds,
            batch_size=args.batch_size,
            checkpoint=checkpoint,
            sanity_checks=not args.no_checks,
            workers=args.workers,
            progress=not (quiet or args.no_progress),
            console=err,
            model_name=model_name,
            data_name=data_name,
            data_classes=classes,
            certify=certificates[model_name].certify,
            noise_samples=certificates[model_name].noise_samples,
        )
        report = with_notes(report, [n for n in (limit_note, certificates[model_name].note) if n])
        reports.append(report)
        if main:
            written += write_reports(report, files[model_name], plan)
    _print_results(console, reports, written, quiet=quiet, command=_standard_command(args))
    return _exit_code(console, reports, strict=args.strict)


def _print_results(
    console: Console,
    reports: list[AuditReport],
    written: list[Path],
    *,
    quiet: bool,
    command: str | None = None,
) -> None:
    """The tables (or, quiet, one line per model), then thresholds, warnings and files written."""
    if quiet:
        for report in reports:
            worst = ", ".join(f"{percent(report.worst_case[e])} at eps {e:g}" for e in report.eps)
            console.print(
                f"{printable(report.model)} on {printable(report.data)}: "
                f"clean {percent(report.clean_accuracy)}; worst case {worst}",
                highlight=False,
                markup=False,
            )
    else:
        one = len(reports) == 1
        console.print(robust_table(reports[0]) if one else comparison_table(reports))
        print_strength_notes(console, reports, command)
    for report in reports:
        prefix = f"{printable(report.model)}: " if len(reports) > 1 else ""
        for result in report.thresholds:
            mark = "[green]PASS[/]" if result.passed else "[bold red]FAIL[/]"
            console.print(
                f"{mark} {escape(prefix + printable(result.spec))}: "
                f"{escape(printable(result.message))}",
                highlight=False,
            )
        for warning in report.warnings:
            console.print(
                f"[bold yellow]warning:[/] {escape(prefix + printable(warning))}", highlight=False
            )
    if written and not quiet:
        unique = list(dict.fromkeys(written))  # suite.toml in --out is shared by the models
        console.print(
            "reports: " + ", ".join(printable(p) for p in unique), highlight=False, markup=False
        )


def _exit_code(console: Console, reports: list[AuditReport], *, strict: bool) -> int:
    """1 when a threshold failed, or under ``--strict`` when a sanity check warned; else 0."""
    if not all(report.passed for report in reports):
        return 1
    if strict and any(report.warnings for report in reports):
        console.print("--strict: sanity checks warned; exit 1", highlight=False)
        return 1
    return 0
