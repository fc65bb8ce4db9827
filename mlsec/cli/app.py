"""The ``mlsec`` command line: ``audit``, ``train``, ``defend`` and ``attacks``.

Exit codes: 0 success, 1 a robustness threshold failed (or, with ``--strict``, a sanity check
warned), 2 bad usage or input, 3 internal error, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mlsec import attacks as attack_registry
from mlsec.auditing.report import AuditReport
from mlsec.auditing.run import audit
from mlsec.auditing.suite import BUILTIN_SUITES, Suite, load_suite, parse_eps
from mlsec.auditing.thresholds import parse_thresholds
from mlsec.cli import defend as _defend_cli
from mlsec.cli import train as _train_cli
from mlsec.cli.common import (
    Parser,
    check_writable,
    colour,
    device_from,
    float_list,
    percent,
    positive_int,
    print_notes,
    printable,
    robust_cell,
    robust_table,
)
from mlsec.core.files import write_atomic
from mlsec.errors import InputError
from mlsec.io.loading import (
    apply_normalize,
    image_folder_classes,
    load_data,
    load_model,
    parse_normalize,
)

__all__ = ["main"]


def _eps_list(text: str) -> list[float]:
    try:
        return parse_eps(text)
    except InputError as error:  # argparse would swallow the message of a ValueError
        raise argparse.ArgumentTypeError(str(error).removeprefix("--eps: ")) from None


def _build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mlsec", description="Adversarial-robustness audits for PyTorch models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    run = sub.add_parser(
        "audit",
        help="robust accuracy of a model under attacks and budgets",
        description="Audit a model's robustness. Exit codes: 0 ok, 1 a threshold failed (or a "
        "warning under --strict), 2 bad usage or input, 3 internal error, 130 interrupted "
        "(Ctrl-C).",
    )
    what = run.add_argument_group("model and data")
    what.add_argument(
        "--model",
        default=None,
        help="a bundled model name, a TorchScript (.pt), torch.export (.pt2) or weights file "
        "(.safetensors, or a state dict .pt with --arch), or module:function (default: the "
        "bundled mnist-cnn and mnist-cnn-pgd, side by side)",
    )
    what.add_argument(
        "--arch", default=None, help="module:factory building the model for a weights file"
    )
    what.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow loading a pickled whole model (runs code from the file: only for files you "
        "trust)",
    )
    what.add_argument(
        "--data",
        default="mnist-sample",
        help="mnist-sample, an .npz with x and y, an image folder (one subfolder per class), or "
        "module:function returning a Dataset, a DataLoader or (x, y) (default: mnist-sample)",
    )
    what.add_argument(
        "--normalize",
        default=None,
        metavar="MEAN,STD",
        help="the model expects (x - mean) / std: normalize inside the model so eps stays in "
        "input units (per channel: M1,M2,M3,S1,S2,S3)",
    )
    what.add_argument(
        "--bounds",
        type=float_list,
        default=None,
        metavar="LO,HI",
        help="input range (default: 0,1); for negative values write --bounds=-1,1",
    )
    what.add_argument("--limit", type=positive_int, default=None, help="audit the first N samples")

    guard = run.add_argument_group("defended model (GAN purifiers)")
    guard.add_argument(
        "--defense",
        default=None,
        metavar="NAME|PATH",
        help="audit --model (default mnist-cnn) behind a purifier: a bundled defense ("
        "mnist-defense-gan, mnist-ape-gan) or a file saved by mlsec defend train; reports "
        "non-adaptive and adaptive (BPDA + EOT) attacks side by side",
    )
    guard.add_argument(
        "--eot",
        type=positive_int,
        default=4,
        help="draws of a randomised purifier's randomness per adaptive step (default 4)",
    )
    guard.add_argument(
        "--purify-steps", type=positive_int, default=None, help="override Defense-GAN's L"
    )
    guard.add_argument(
        "--purify-restarts", type=positive_int, default=None, help="override Defense-GAN's R"
    )
    guard.add_argument(
        "--bpda",
        choices=["identity", "encoder"],
        default=None,
        help="override the BPDA surrogate of a purifier that declares one (Defense-GAN)",
    )

    how = run.add_argument_group("attacks")
    how.add_argument(
        "--suite",
        default=None,
        help=f"a built-in suite ({', '.join(BUILTIN_SUITES)}) or a TOML file (default: default)",
    )
    how.add_argument(
        "--attacks",
        default=None,
        help="comma-separated registered attacks, chained in this order, instead of a suite",
    )
    how.add_argument(
        "--eps",
        type=_eps_list,
        default=None,
        help="comma-separated budgets in input units, fractions allowed (default: 0.1,0.2,0.3)",
    )
    how.add_argument("--norm", choices=["linf", "l2"], default=None, help="override the norm")
    how.add_argument("--steps", type=positive_int, default=None, help="override attack steps")
    how.add_argument("--restarts", type=positive_int, default=None, help="override attack restarts")
    how.add_argument("--seed", type=int, default=None, help="override the attacks' seed")
    how.add_argument("--batch-size", type=positive_int, default=500)
    how.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    how.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        metavar="DIR",
        help="record each finished batch in DIR; rerunning the same command resumes",
    )

    gate = run.add_argument_group("CI gate")
    gate.add_argument(
        "--fail-under",
        action="append",
        default=[],
        metavar="ATTACK@EPS=MIN",
        help="exit 1 unless robust accuracy after ATTACK (or 'worst') at EPS is >= MIN, e.g. "
        "pgd@0.3=0.80; repeat or comma-separate",
    )
    gate.add_argument(
        "--max-drop",
        action="append",
        default=[],
        metavar="ATTACK@EPS=DROP",
        help="exit 1 unless clean accuracy minus robust accuracy after ATTACK at EPS is <= DROP",
    )
    gate.add_argument("--strict", action="store_true", help="exit 1 when a sanity check warns")
    gate.add_argument(
        "--no-checks", action="store_true", help="skip the gradient-masking sanity checks"
    )

    out = run.add_argument_group("reports")
    out.add_argument("--json", type=Path, default=None, metavar="PATH", help="JSON report")
    out.add_argument("--markdown", type=Path, default=None, metavar="PATH", help="Markdown summary")
    out.add_argument("--html", type=Path, default=None, metavar="PATH", help="HTML report")
    out.add_argument("--junit", type=Path, default=None, metavar="PATH", help="JUnit XML")
    out.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="write report.json, report.md, report.html, report.junit.xml and suite.toml to DIR",
    )
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bars or table")
    out.add_argument("--no-color", action="store_true", help="plain text output")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")

    _train_cli.add_parser(sub)
    _defend_cli.add_parser(sub)
    sub.add_parser("attacks", help="list the registered attacks")
    return parser


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


def _report_paths(args: argparse.Namespace) -> dict[str, Path]:
    paths = {
        kind: path
        for kind, path in (
            ("json", args.json),
            ("markdown", args.markdown),
            ("html", args.html),
            ("junit", args.junit),
        )
        if path is not None
    }
    if args.out is not None:
        _check_out(args.out)
        for kind, name in (
            ("json", "report.json"),
            ("markdown", "report.md"),
            ("html", "report.html"),
            ("junit", "report.junit.xml"),
        ):
            paths.setdefault(kind, args.out / name)
    return paths


def _check_out(out: Path) -> None:
    """Refuse, before any work, an ``--out`` folder that cannot be created or written."""
    shown = printable(out)
    if out.is_symlink() and not out.exists():
        raise InputError(f"--out: {shown} is a link that leads to no folder")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: {shown} exists and is not a folder")
    parent = Path(os.path.realpath(out)).parent
    if parent.exists() and not parent.is_dir():
        raise InputError(f"--out: {printable(parent)} is not a folder")
    if not parent.is_dir():
        raise InputError(f"--out: folder {printable(parent)} does not exist")
    folder = out if out.is_dir() else parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"--out: folder {printable(folder)} is not writable")


# What a plain ``mlsec audit`` compares: a standard model and its adversarially trained peer.
DEFAULT_MODELS = ("mnist-cnn", "mnist-cnn-pgd")


def _per_model(paths: dict[str, Path], args: argparse.Namespace, name: str) -> dict[str, Path]:
    """Report paths of one model when several are audited: DIR/NAME/... or PATH.NAME.suffix."""
    per: dict[str, Path] = {}
    for kind, path in paths.items():
        if args.out is not None and path.parent == args.out:
            per[kind] = args.out / name / path.name
        else:
            per[kind] = path.with_name(f"{path.stem}.{name}{path.suffix}")
    return per


def _report_files(
    paths: dict[str, Path], args: argparse.Namespace, name: str, several: bool
) -> dict[str, Path]:
    """Every file written for one model: its reports, and ``suite`` (the resolved suite)."""
    files = _per_model(paths, args, name) if several else dict(paths)
    if files:
        first = next(iter(files.values()))
        files["suite"] = (
            args.out / "suite.toml" if args.out is not None else first.with_suffix(".suite.toml")
        )
    return files


def _check_report_files(files: dict[str, Path], args: argparse.Namespace) -> None:
    """Refuse, before any attack runs, a report file that cannot be written."""
    for kind, path in files.items():
        inside = args.out is not None and args.out in path.parents
        named = next(iter(files)) if kind == "suite" else kind
        check_writable("--out" if inside else f"--{named}", path, create_folders=inside)


def _comparison(reports: list[AuditReport]) -> Table:
    """One table with a column per model: clean accuracy, then each attack and eps, worst case."""
    first = reports[0]
    table = Table(
        title=f"Robust accuracy on {escape(printable(first.data))} "
        f"({first.n} samples, {first.norm})",
        caption="each attack's row counts the samples standing after it and the attacks above it",
    )
    table.add_column("attack", style="bold")
    table.add_column("eps", justify="right")
    for report in reports:
        table.add_column(escape(printable(report.model)), justify="right")
    table.add_row("clean", "", *(percent(r.clean_accuracy) for r in reports))
    for name in first.attacks:
        table.add_section()
        for eps in first.eps:
            cells = [robust_cell(report, name, eps) for report in reports]
            table.add_row(escape(name), f"{eps:g}", *cells)
    table.add_section()
    for eps in first.eps:
        table.add_row(
            "worst case",
            f"{eps:g}",
            *(
                f"[{colour(r.worst_case[eps], r.clean_accuracy)}]{percent(r.worst_case[eps])}"
                for r in reports
            ),
        )
    return table


def _audit(args: argparse.Namespace) -> int:
    if args.defense is not None:
        return _defend_cli.audit_defense(args)
    for option in ("purify_steps", "purify_restarts", "bpda"):
        if getattr(args, option) is not None:
            raise InputError(f"--{option.replace('_', '-')} needs --defense")
    console = Console(no_color=args.no_color, highlight=not args.no_color, soft_wrap=True)
    paths = _report_paths(args)
    for kind, path in paths.items():
        if args.out is None or path.parent != args.out:
            check_writable(f"--{kind}", path)
    thresholds = parse_thresholds(args.fail_under, "min-accuracy") + parse_thresholds(
        args.max_drop, "max-drop"
    )
    device = device_from(args.device)
    specs = [args.model] if args.model is not None else list(DEFAULT_MODELS)
    # The user's modules load first: they may register attacks of their own.
    loaded = [load_model(spec, arch=args.arch, trust_pickle=args.trust_pickle) for spec in specs]
    (x, y), data_name, data_notes = load_data(args.data)
    # An image folder's class labels go in the report: they decide what "correct" means.
    classes = image_folder_classes(Path(args.data)) if Path(args.data).is_dir() else None
    plan = _plan(args)
    several = len(loaded) > 1
    files = {name: _report_files(paths, args, name, several) for _, name, _ in loaded}
    for planned in files.values():
        _check_report_files(planned, args)
    if args.limit is not None:
        x, y = x[: args.limit], y[: args.limit]
    err = Console(stderr=True, no_color=args.no_color)
    notes = [n for _, _, model_notes in loaded for n in model_notes]
    print_notes(err, [*notes, *data_notes], quiet=args.quiet)

    reports = []
    written: list[Path] = []
    for model, model_name, _ in loaded:
        if args.normalize is not None:
            mean, std = parse_normalize(args.normalize)
            model = apply_normalize(model, mean, std, channels=x.shape[1])
        checkpoint = args.checkpoint
        if several and checkpoint is not None:
            checkpoint = checkpoint / model_name
        report = audit(
            model.to(device),
            (x, y),
            suite=plan,
            thresholds=thresholds,
            batch_size=args.batch_size,
            checkpoint=checkpoint,
            sanity_checks=not args.no_checks,
            progress=not (args.quiet or args.no_progress),
            console=err,
            model_name=model_name,
            data_name=data_name,
            data_classes=classes,
        )
        reports.append(report)
        written += _write_reports(report, files[model_name], plan)

    for report in reports:
        if args.quiet:
            worst = ", ".join(f"{percent(report.worst_case[e])} at eps {e:g}" for e in report.eps)
            console.print(
                f"{printable(report.model)} on {printable(report.data)}: "
                f"clean {percent(report.clean_accuracy)}; worst case {worst}",
                highlight=False,
                markup=False,
            )
        elif len(reports) == 1:
            console.print(robust_table(report))
    if len(reports) > 1 and not args.quiet:
        console.print(_comparison(reports))
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
    if written and not args.quiet:
        unique = list(dict.fromkeys(written))  # suite.toml in --out is shared by the models
        console.print(
            "reports: " + ", ".join(printable(p) for p in unique), highlight=False, markup=False
        )
    if not all(report.passed for report in reports):
        return 1
    if args.strict and any(report.warnings for report in reports):
        console.print("--strict: sanity checks warned; exit 1", highlight=False)
        return 1
    return 0


def _write_reports(report: AuditReport, files: dict[str, Path], plan: Suite) -> list[Path]:
    """Write one model's reports and the resolved suite (see :func:`_report_files`).

    Returns:
        The paths written, in order.

    """
    writers = {
        "json": lambda: report.to_json() + "\n",
        "markdown": report.to_markdown,
        "html": lambda: report.to_html(),
        "junit": report.to_junit,
        "suite": plan.to_toml,
    }
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, path in files.items():
        write_atomic(path, writers[kind]())
        written.append(path)
    return written


def _list_attacks() -> int:
    table = Table(title="Registered attacks")
    table.add_column("name", style="bold")
    table.add_column("class")
    table.add_column("parameters")
    for name in attack_registry.list_attacks():
        cls = attack_registry.get(name)
        names = [field.name for field in dataclasses.fields(cls)]
        if cls.open_params:  # the ART attacks: their own options instead of the stored tuple
            fixed = getattr(cls, "art_class", "")
            names = [n for n in names if n != "options" and not (fixed and n == "attack")]
            names.append(f"+ the options of ART's {fixed or 'attack'}")
        table.add_row(name, cls.__name__, ", ".join(names))
    Console().print(table)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mlsec`` command line; returns the exit code."""
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "audit":
            return _audit(args)
        if args.command == "train":
            return _train_cli.run(args)
        if args.command == "defend":
            return _defend_cli.run(args)
        return _list_attacks()
    except InputError as error:
        print(f"mlsec: {printable(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mlsec: interrupted", file=sys.stderr)
        return 130
    except SystemExit as error:  # mlsec never exits from inside a command: user code did
        print(
            f"mlsec: user code called sys.exit({error.code!r}) during the run, which mlsec does "
            "not take as a result; remove the call from the model or data code",
            file=sys.stderr,
        )
        return 2
    except Exception:  # a bug in mlsec (or the user's model): keep the traceback, not exit 1
        traceback.print_exc()
        print("mlsec: internal error (the traceback above says where); exit 3", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
