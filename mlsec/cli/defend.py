"""``mlsec defend train`` and ``mlsec audit --defense``: GAN purifiers from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from mlsec import zoo
from mlsec.auditing.defended import evaluate_defense
from mlsec.auditing.defended_report import DefenseReport
from mlsec.auditing.thresholds import parse_thresholds
from mlsec.cli.common import check_writable, device_from, positive_int, print_notes
from mlsec.cli.options import FLAGS
from mlsec.cli.report_files import check_report_files, report_files, report_paths, write_reports
from mlsec.core.distributed import current
from mlsec.core.text import percent, printable
from mlsec.defenses import APEGAN, PURIFIERS, DefenseGAN, Purifier, load_defense
from mlsec.errors import InputError
from mlsec.io import PICKLE_WARNING, image_folder_classes, load_data, load_model

__all__ = ["add_defense_options", "add_parser", "audit_defense", "resolve_defense", "run"]

# Options that belong to one purifier only.
_OWN_OPTIONS = {
    "gan_steps": "defense-gan",
    "encoder_steps": "defense-gan",
    "latent": "defense-gan",
    "steps": "defense-gan",
    "restarts": "defense-gan",
    "epochs": "ape-gan",
    "eps": "ape-gan",
    "model": "ape-gan",
}


def add_parser(sub: Any) -> None:
    """Add the ``defend`` subcommand to the ``mlsec`` parser."""
    defend = sub.add_parser(
        "defend",
        help="train a GAN purifier (Defense-GAN, APE-GAN)",
        description="Train a GAN purifier; audit a model behind it with mlsec audit --defense.",
    )
    verbs = defend.add_subparsers(dest="verb", required=True, parser_class=type(defend))
    train = verbs.add_parser(
        "train",
        help="train a purifier on clean data",
        description="Train a purifier. The run folder gets a checkpoint, log.jsonl and a PNG grid "
        "of samples at every checkpoint (to see a GAN converge or collapse); --resume continues "
        "it. The fitted defense is written to RUN/defense.safetensors (or --out). Exit codes: 0 "
        "ok, 2 bad usage or input, 3 internal error.",
    )
    train.add_argument("defense", choices=sorted(PURIFIERS), help="which purifier")
    train.add_argument(
        "--data",
        required=True,
        help="clean training images: mnist-sample, an .npz with x and y, an image folder, or "
        "module:function",
    )
    train.add_argument("--run", type=Path, required=True, metavar="DIR", help="the run's folder")
    train.add_argument("--out", type=Path, default=None, help="defense file (RUN/defense...)")
    train.add_argument("--resume", action="store_true", help="continue the run in --run")
    train.add_argument("--limit", type=positive_int, default=None, help="train on the first N")
    train.add_argument("--batch-size", type=positive_int, default=64)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    gan = train.add_argument_group("defense-gan")
    gan.add_argument("--gan-steps", type=positive_int, default=None, help="generator steps (10000)")
    gan.add_argument(
        "--encoder-steps",
        type=int,
        default=None,
        help="encoder steps (2000; 0: none)",
    )
    gan.add_argument("--latent", type=positive_int, default=None, help="latent size (32)")
    gan.add_argument("--steps", type=positive_int, default=None, help="projection steps L (200)")
    gan.add_argument("--restarts", type=positive_int, default=None, help="random starts R (10)")
    ape = train.add_argument_group("ape-gan")
    ape.add_argument("--epochs", type=positive_int, default=None, help="epochs (10)")
    ape.add_argument("--eps", type=float, default=None, help="FGSM budget it trains on (0.3)")
    ape.add_argument(
        "--model",
        default=None,
        help="the classifier whose FGSM examples it learns to undo: a bundled name, a model "
        "file or module:function (default mnist-cnn)",
    )


def _given(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in _OWN_OPTIONS if getattr(args, k) is not None}


def run(args: argparse.Namespace) -> int:
    """Run ``mlsec defend``; returns the exit code."""
    wrong = [k for k in _given(args) if _OWN_OPTIONS[k] != args.defense]
    if wrong:
        flags = ", ".join("--" + k.replace("_", "-") for k in wrong)
        raise InputError(f"{flags}: not an option of {args.defense}")
    out = args.out or args.run / "defense.safetensors"
    if out.exists() and out.is_dir():
        raise InputError(f"--out: {out} is a folder; give a file path")
    if args.out is not None:
        check_writable("--out", out)
    device = device_from(args.device)
    samples, _, notes = load_data(args.data)
    if args.limit is not None:
        samples = samples.subset(range(min(args.limit, len(samples))))
    x, y = samples.tensors()
    err = Console(stderr=True)
    print_notes(err, notes, quiet=False)
    common: dict[str, Any] = {
        "batch_size": args.batch_size,
        "folder": str(args.run),
        "resume": args.resume,
        "device": device,
        "progress": not args.no_progress,
        "console": err,
    }
    defense: Purifier
    if args.defense == "defense-gan":
        gan = DefenseGAN(
            latent=args.latent or 32,
            steps=args.steps or 200,
            restarts=args.restarts or 10,
            seed=args.seed,
        )
        defense = gan.fit(
            (x, y),
            gan_steps=args.gan_steps or 10000,
            encoder_steps=2000 if args.encoder_steps is None else args.encoder_steps,
            **common,
        )
    else:
        model, _, model_notes = load_model(args.model or "mnist-cnn", terms=FLAGS)
        print_notes(err, [n for n in model_notes if n == PICKLE_WARNING], quiet=True)
        ape = APEGAN(eps=0.3 if args.eps is None else args.eps, seed=args.seed)
        defense = ape.fit((x, y), model=model, epochs=args.epochs or 10, **common)
    defense.save(out)
    Console().print(
        f"{args.defense} fitted on {len(y)} images; saved to {out}. Audit a model behind it: "
        f"mlsec audit --defense {out}",
        highlight=False,
        markup=False,
    )
    return 0


def resolve_defense(spec: str) -> tuple[Purifier, str]:
    """A bundled defense by name or a saved defense file; returns it and its label."""
    if spec in zoo.list_defenses():
        return zoo.load_defense(spec), spec
    path = Path(spec)
    if path.is_file():
        return load_defense(path), path.name
    if path.is_dir():
        raise InputError(
            f"--defense: {spec} is a folder; give the defense file in it, e.g. "
            f"{path / 'defense.safetensors'}"
        )
    raise InputError(
        f"--defense: {spec!r} is neither a bundled defense ({', '.join(zoo.list_defenses())}) "
        "nor a saved defense file"
    )


# Audit options that --defense does not combine with, and why.
_NOT_WITH_DEFENSE = {
    "suite": "name attacks with --attacks",
    "normalize": "normalize inside the model",
    "norm": "defense audits are linf",
    "restarts": "not used by the defense audit",
}


def _report_files(args: argparse.Namespace) -> dict[str, Path]:
    """The files to write, checked before any work: the plain audit's layout."""
    named = {kind: getattr(args, kind) for kind in ("json", "markdown", "html", "junit")}
    files = report_files(report_paths(named, args.out), args.out, "defended", several=False)
    check_report_files(files, args.out)
    return files


def _configure(defense: Purifier, args: argparse.Namespace) -> None:
    """Apply --purify-steps, --purify-restarts and --bpda to the loaded defense."""
    overrides = {
        "--purify-steps": ("steps", args.purify_steps),
        "--purify-restarts": ("restarts", args.purify_restarts),
        "--bpda": ("bpda", args.bpda),
    }
    for option, (key, value) in overrides.items():
        if value is not None:
            if not hasattr(defense, key):
                raise InputError(f"{option}: {defense.name} has no {key}")
            setattr(defense, key, value)
    if args.bpda == "encoder" and getattr(defense, "encoder", None) is None:
        raise InputError("--bpda encoder: this Defense-GAN has no fitted encoder")


def _attack_names(args: argparse.Namespace) -> list[str]:
    if args.attacks is None:
        return ["fgsm", "pgd", "apgd"]
    attacks = [a.strip().lower() for a in args.attacks.split(",") if a.strip()]
    if not attacks:
        raise InputError("--attacks: give at least one attack")
    return attacks


def audit_defense(args: argparse.Namespace) -> int:
    """``mlsec audit --defense``: non-adaptive and adaptive attacks side by side."""
    for option, why in _NOT_WITH_DEFENSE.items():
        if getattr(args, option) not in (None, [], False):
            raise InputError(f"--{option.replace('_', '-')} does not combine with --defense: {why}")
    files = _report_files(args)
    thresholds = parse_thresholds(args.fail_under, "min-accuracy") + parse_thresholds(
        args.max_drop, "max-drop"
    )
    defense, label = resolve_defense(args.defense)
    _configure(defense, args)
    device = device_from(args.device)  # under torchrun: joins the job first
    main = current().is_main  # several processes: rank 0 alone prints and writes reports
    model, model_name, model_notes = load_model(
        args.model or "mnist-cnn", arch=args.arch, trust_pickle=args.trust_pickle, terms=FLAGS
    )
    samples, data_name, data_notes = load_data(
        args.data, resize=args.resize, center_crop=args.center_crop
    )
    if args.limit is not None:
        samples = samples.subset(range(min(args.limit, len(samples))))
    err = Console(stderr=True, no_color=args.no_color, quiet=not main)
    print_notes(err, [*model_notes, *data_notes], quiet=args.quiet)
    if args.bounds is not None and tuple(args.bounds) != (0.0, 1.0):
        raise InputError("--bounds: the GAN purifiers work on images in [0, 1]")
    attacks = _attack_names(args)
    for net in defense.networks().values():
        net.to(device)
    report = evaluate_defense(
        defense,
        model.to(device),
        samples,
        eps=args.eps or [0.3],
        attacks=attacks,
        adaptive=[a for a in attacks if a != "fgsm"],
        steps=args.steps or 20,
        eot=args.eot,
        seed=0 if args.seed is None else args.seed,
        batch_size=args.batch_size,
        thresholds=thresholds,
        checkpoint=args.checkpoint,
        workers=args.workers,
        progress=not (args.quiet or args.no_progress),
        console=err,
        model_name=model_name,
        data_name=data_name,
        defense_name=label,
    )
    if Path(args.data).is_dir():  # an image folder's labels decide what "correct" means
        report.settings["data_classes"] = image_folder_classes(Path(args.data))
    assert report.suite is not None  # evaluate_defense always sets it
    written = write_reports(report, files, report.suite) if main else []
    return _show(report, args, written, quiet=not main)


def _show(
    report: DefenseReport, args: argparse.Namespace, written: list[Path], *, quiet: bool = False
) -> int:
    """Print the table (or one line per eps), verdicts, flags and files; returns the exit code.

    ``quiet`` (a rank other than 0) prints nothing but still returns the exit code.
    """
    console = Console(
        no_color=args.no_color, highlight=not args.no_color, soft_wrap=True, quiet=quiet
    )
    if args.quiet:
        for e, acc in report.worst_non_adaptive.items():
            ada = report.worst_adaptive.get(e)
            console.print(
                f"{report.model} behind {report.defense} on {report.data}: clean "
                f"{percent(report.clean_defended)}; eps {e:g}: non-adaptive {percent(acc)}, "
                "adaptive " + ("—" if ada is None else percent(ada)),
                highlight=False,
                markup=False,
            )
    else:
        console.print(report.table())
        if report.strength_note is not None:
            console.print(f"[dim]note:[/] {escape(report.strength_note)}", highlight=False)
    for result in report.thresholds:
        mark = "[green]PASS[/]" if result.passed else "[bold red]FAIL[/]"
        console.print(
            f"{mark} {escape(printable(result.spec))}: {escape(result.message)}", highlight=False
        )
    for flag in report.flags:
        console.print(f"[bold yellow]warning:[/] {escape(flag)}", highlight=False)
    if written and not args.quiet:
        shown = ", ".join(printable(p) for p in written)
        console.print(f"report: {shown}", highlight=False, markup=False)
    if not report.passed:
        return 1
    if args.strict and report.flags:
        console.print("--strict: the defense audit warned; exit 1", highlight=False)
        return 1
    return 0


def add_defense_options(group: Any) -> None:
    """The ``--defense`` argument group of ``mlsec audit``."""
    group.add_argument(
        "--defense",
        default=None,
        metavar="NAME|PATH",
        help="audit --model (default mnist-cnn) behind a purifier: a bundled defense ("
        "mnist-defense-gan, mnist-ape-gan) or a file saved by mlsec defend train; reports "
        "non-adaptive and adaptive (BPDA + EOT) attacks side by side",
    )
    group.add_argument(
        "--eot",
        type=positive_int,
        default=4,
        help="draws of a randomised purifier's randomness per adaptive step (default 4)",
    )
    group.add_argument(
        "--purify-steps", type=positive_int, default=None, help="override Defense-GAN's L"
    )
    group.add_argument(
        "--purify-restarts", type=positive_int, default=None, help="override Defense-GAN's R"
    )
    group.add_argument(
        "--bpda",
        choices=["identity", "encoder"],
        default=None,
        help="override the BPDA surrogate of a purifier that declares one (Defense-GAN)",
    )
