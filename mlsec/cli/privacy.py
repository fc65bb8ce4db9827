"""``mlsec audit --privacy``: membership inference against one or more models, in place of attacks.

Without ``--model`` the bundled ``mnist-cnn`` and ``mnist-cnn-pgd`` are audited side by side on
their bundled training images (the members) and the held-out sample (the non-members); the table
says which model leaks more by each metric. For bundled models the members scored by default are
``mnist-members-matched`` (images 5000-7999, from the same writers as the held-out sample; see
:func:`mlsec.datasets.mnist_members_matched`), while the shadows train on all 8,000 members and the
non-members. LiRA's shadow models are trained once per architecture, on the members and
non-members together, and cached (``--shadow-dir``) so that a rerun trains nothing.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mlsec.attacks.inference.metrics import DEFAULT_FPRS, MembershipMetrics, check_fprs
from mlsec.auditing.privacy import DEFAULT_ATTACKS, audit_privacy
from mlsec.auditing.privacy_report import PrivacyReport, parse_leak_thresholds
from mlsec.auditing.shadows import Shadows, train_shadows
from mlsec.cli.common import check_writable, device_from, float_list, positive_int, print_notes
from mlsec.cli.options import FLAGS
from mlsec.cli.report_files import (
    check_report_files,
    checked_paths,
    report_files,
    write_reports,
)
from mlsec.core.text import printable
from mlsec.defenses.training import METHODS, TrainConfig
from mlsec.errors import InputError
from mlsec.io import load_data, load_entry_point, load_model
from mlsec.reports.labels import percent
from mlsec.reports.privacy import fpr_label, metric_columns
from mlsec.zoo import MODELS

__all__ = ["DEFAULT_MODELS", "add_privacy_options", "leakier", "run_privacy"]

# What a plain ``mlsec audit --privacy`` compares: Song et al. (2019) found adversarially trained
# models leak more membership than standard ones.
DEFAULT_MODELS = ("mnist-cnn", "mnist-cnn-pgd")
# The options of the attack audit that mean nothing for a privacy audit.
_ATTACK_ONLY = (
    "suite",
    "attacks",
    "eps",
    "norm",
    "steps",
    "restarts",
    "checkpoint",
    "certify",
    "defense",
)
_PRIVACY_ONLY = (
    "members",
    "non_members",
    "privacy_attacks",
    "fpr",
    "shadow_models",
    "shadow_epochs",
    "shadow_method",
    "shadow_eps",
    "shadow_arch",
    "shadow_dir",
)


def add_privacy_options(group: Any) -> None:
    """The ``privacy`` argument group of ``mlsec audit``."""
    group.add_argument(
        "--privacy",
        action="store_true",
        help="audit membership inference (does the model give away its training data?) instead "
        "of attacks; without --model: mnist-cnn and mnist-cnn-pgd on their bundled training "
        "images",
    )
    group.add_argument(
        "--members",
        default=None,
        metavar="DATA",
        help="the data the model was trained on (default for bundled models: "
        "mnist-members-matched, the 3,000 of their training images written by the same people as "
        "mnist-sample)",
    )
    group.add_argument(
        "--non-members",
        default=None,
        metavar="DATA",
        help="data the model never saw (default for bundled models: mnist-sample)",
    )
    group.add_argument(
        "--privacy-attacks",
        default=None,
        metavar="LIST",
        help=f"comma-separated membership attacks (default: {','.join(DEFAULT_ATTACKS)})",
    )
    group.add_argument(
        "--fpr",
        type=float_list,
        default=None,
        metavar="LIST",
        help="false-positive rates to report the TPR at (default: 0.001,0.01)",
    )
    group.add_argument(
        "--shadow-models", type=positive_int, default=None, help="LiRA shadow models (default 8)"
    )
    group.add_argument(
        "--shadow-epochs", type=positive_int, default=None, help="shadow training epochs"
    )
    group.add_argument(
        "--shadow-method",
        choices=sorted(METHODS),
        default=None,
        help="shadow training method (default standard; match the model's own recipe if known)",
    )
    group.add_argument(
        "--shadow-eps", type=float, default=None, help="training eps of an adversarial method"
    )
    group.add_argument(
        "--shadow-arch",
        default=None,
        metavar="MODULE:FACTORY",
        help="the untrained architecture of the shadow models (default: the bundled model's, or "
        "--arch)",
    )
    group.add_argument(
        "--shadow-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="cache of the shadow models; a rerun reuses them (default: ~/.cache/mlsec/shadows)",
    )
    group.add_argument(
        "--fail-over",
        action="append",
        default=[],
        metavar="ATTACK@METRIC=MAX",
        help="exit 1 when METRIC (auc, balanced-accuracy, tprFPR) of ATTACK (or 'worst') exceeds "
        "MAX, e.g. lira@tpr0.001=0.02; repeat or comma-separate",
    )


def check_options(args: argparse.Namespace) -> None:
    """Refuse options that belong to the other kind of audit (before any work)."""
    if args.privacy:
        for option in _ATTACK_ONLY:
            if getattr(args, option, None) is not None:
                raise InputError(f"--{option.replace('_', '-')} does not apply to --privacy")
        for option in ("fail_under", "max_drop"):
            if getattr(args, option):
                raise InputError(
                    f"--{option.replace('_', '-')} does not apply to --privacy; use --fail-over"
                )
        if args.data != "mnist-sample":
            raise InputError("--data does not apply to --privacy; give --members and --non-members")
        return
    for option in _PRIVACY_ONLY:
        if getattr(args, option) is not None:
            raise InputError(f"--{option.replace('_', '-')} needs --privacy")
    if args.fail_over:
        raise InputError("--fail-over needs --privacy (for attacks use --fail-under)")


def _attacks(args: argparse.Namespace) -> tuple[str, ...]:
    if args.privacy_attacks is None:
        return DEFAULT_ATTACKS
    names = tuple(p.strip().lower() for p in args.privacy_attacks.split(",") if p.strip())
    if not names:
        raise InputError("--privacy-attacks: give at least one attack")
    return names


def _data(
    spec: str | None, default: str, option: str, bundled: bool, limit: int | None
) -> tuple[Any, str]:
    if spec is None:
        if not bundled:
            raise InputError(
                f"--privacy with your own model needs {option} (the members: the data it was "
                "trained on; the non-members: data it never saw)"
            )
        spec = default
    samples, name, _ = load_data(spec, subject=option)
    if limit is not None:
        samples = samples.subset(range(min(limit, len(samples))))
    return samples, name


def _shadow_arch(args: argparse.Namespace, spec: str) -> tuple[str, Any]:
    """The shadow architecture's ``module:factory`` and the factory itself."""
    if args.shadow_arch is not None:
        return args.shadow_arch, load_entry_point(args.shadow_arch, "--shadow-arch")
    if spec in MODELS:
        build = MODELS.get(spec).build
        return f"{build.__module__}:{build.__name__}", build
    if args.arch is not None:
        return args.arch, load_entry_point(args.arch, "--arch")
    raise InputError(
        "LiRA trains shadow models of the model's architecture: give --shadow-arch "
        "module:factory, or leave lira out with --privacy-attacks"
    )


def _shadows(args: argparse.Namespace, spec: str) -> Shadows:
    arch, build = _shadow_arch(args, spec)
    name = args.shadow_method or "standard"
    eps = 0.0 if name == "standard" else 0.3 if args.shadow_eps is None else args.shadow_eps
    settings: dict[str, Any] = {"build": build, "arch": arch, "method": METHODS[name](eps=eps)}
    if args.shadow_models is not None:
        settings["count"] = args.shadow_models
    if args.shadow_epochs is not None:
        base = Shadows(build=build, arch=arch).config
        settings["config"] = TrainConfig(**{**base.__dict__, "epochs": args.shadow_epochs})
    if args.shadow_dir is not None:
        check_writable("--shadow-dir", args.shadow_dir / "x", create_folders=True)
        settings["folder"] = args.shadow_dir
    return Shadows(**settings)


def run_privacy(args: argparse.Namespace) -> int:
    """Run ``mlsec audit --privacy``; returns the exit code."""
    check_options(args)
    device = device_from(args.device)
    console = Console(no_color=args.no_color, highlight=not args.no_color, soft_wrap=True)
    err = Console(stderr=True, no_color=args.no_color)
    paths = checked_paths(args)
    thresholds = parse_leak_thresholds(args.fail_over)
    attacks = _attacks(args)
    fprs = tuple(args.fpr) if args.fpr is not None else DEFAULT_FPRS
    specs = [args.model] if args.model is not None else list(DEFAULT_MODELS)
    bundled = all(spec in MODELS for spec in specs)
    loaded = [
        (spec, *load_model(spec, arch=args.arch, trust_pickle=args.trust_pickle, terms=FLAGS))
        for spec in specs
    ]
    members, members_name = _data(
        args.members, "mnist-members-matched", "--members", bundled, args.limit
    )
    outsiders, outsiders_name = _data(
        args.non_members, "mnist-sample", "--non-members", bundled, args.limit
    )
    check_fprs(fprs, len(outsiders))  # before any training
    shadows = {spec: _shadows(args, spec) for spec in specs} if "lira" in attacks else {}
    several = len(loaded) > 1
    files = {
        name: report_files(paths, args.out, name, several=several, suite=False)
        for _, _, name, _ in loaded
    }
    for planned in files.values():
        check_report_files(planned, args.out)
    quiet = args.quiet
    print_notes(err, [n for *_, notes in loaded for n in notes], quiet=quiet)
    x_m, y_m = members.tensors()
    x_n, y_n = outsiders.tensors()
    # The shadows train on everything known to be member or not: with the default members, all
    # 8,000 training images of the bundled models (5,000 per shadow, closer to the targets' 8,000).
    everything = args.members is None and args.limit is None
    x_s, y_s = load_data("mnist-members")[0].tensors() if everything else (x_m, y_m)
    trained: dict[Shadows, Any] = {}
    reports: list[PrivacyReport] = []
    written: list[Path] = []
    for spec, model, name, _ in loaded:
        shadow_set = None
        if spec in shadows:
            if shadows[spec] not in trained:
                trained[shadows[spec]] = train_shadows(
                    shadows[spec],
                    torch.cat([x_s, x_n]),
                    torch.cat([y_s, y_n]),
                    device=device,
                    progress=not (quiet or args.no_progress),
                    console=err,
                )
            shadow_set = trained[shadows[spec]]
        report = audit_privacy(
            model.to(device),
            (x_m, y_m),
            (x_n, y_n),
            attacks=attacks,
            shadow_set=shadow_set,
            fprs=fprs,
            thresholds=thresholds,
            batch_size=args.batch_size,
            seed=0 if args.seed is None else args.seed,
            device=device,
            progress=not (quiet or args.no_progress),
            console=err,
            model_name=name,
            members_name=members_name,
            non_members_name=outsiders_name,
        )
        reports.append(report)
        written += write_reports(report, files[name], None)
    _print(console, reports, written, quiet=quiet)
    return 0 if all(r.passed for r in reports) else 1


def comparison(reports: list[PrivacyReport]) -> Table:
    """Rows of attack and metric, a column per model, and which model leaks more."""
    table = Table(title="membership inference (higher: a larger leak)")
    table.add_column("attack")
    table.add_column("metric")
    for report in reports:
        table.add_column(printable(report.model), justify="right")
    if len(reports) > 1:
        table.add_column("leaks more")
    table.add_row("", "accuracy on members", *[percent(r.member_accuracy) for r in reports])
    table.add_row("", "accuracy on non-members", *[percent(r.non_member_accuracy) for r in reports])
    for attack in reports[0].attacks:
        for metric, heading in metric_columns(reports[0]):
            try:
                values = [r.result(attack).value(metric) for r in reports]
            except KeyError:  # not measurable for this attack (see the report's notes)
                continue
            row = [attack, heading, *[percent(v) for v in values]]
            if len(reports) > 1:
                row.append(_leakier([r.result(attack) for r in reports], reports, metric))
            table.add_row(*row)
    return table


def leakier(results: list[MembershipMetrics], metric: str) -> int | None:
    """The index of the result that leaks more by ``metric``, or ``None`` within the noise.

    The largest value wins when it exceeds every other by more than twice their combined standard
    error (:meth:`MembershipMetrics.standard_error`); otherwise the difference is noise.
    """
    values = [r.value(metric) for r in results]
    best = max(range(len(values)), key=values.__getitem__)
    for i, other in enumerate(results):
        if i == best:
            continue
        error = math.hypot(results[best].standard_error(metric), other.standard_error(metric))
        if values[best] - values[i] <= 2 * error:
            return None
    return best


def _leakier(results: list[MembershipMetrics], reports: list[PrivacyReport], metric: str) -> str:
    best = leakier(results, metric)
    return "within noise" if best is None else printable(reports[best].model)


def _print(
    console: Console, reports: list[PrivacyReport], written: list[Path], *, quiet: bool
) -> None:
    if quiet:
        for report in reports:
            parts = [
                f"{r.attack} AUC {percent(r.auc)}"
                + "".join(
                    f", TPR {percent(t)} at {fpr_label(f)} FPR" for f, t in r.tpr_at_fpr.items()
                )
                for r in report.results
            ]
            console.print(f"{printable(report.model)}: " + "; ".join(parts), markup=False)
    else:
        console.print(comparison(reports))
    for report in reports:
        prefix = f"{printable(report.model)}: " if len(reports) > 1 else ""
        for result in report.thresholds:
            mark = "[green]PASS[/]" if result.passed else "[bold red]FAIL[/]"
            console.print(
                f"{mark} {escape(prefix + printable(result.spec))}: {escape(result.message)}",
                highlight=False,
            )
        for warning in report.warnings:
            console.print(f"[bold yellow]warning:[/] {escape(prefix + printable(warning))}")
    if written and not quiet:
        console.print("reports: " + ", ".join(printable(p) for p in written), markup=False)
