"""The ``mlsec`` command line: the top-level parser and the dispatch to one module per command.

``audit`` (:mod:`mlsec.cli.audit`), ``scan`` (:mod:`mlsec.cli.scan`), ``train``
(:mod:`mlsec.cli.train`), ``defend`` (:mod:`mlsec.cli.defend`) and ``attacks``
(:mod:`mlsec.cli.attacks`). Exit codes (see
:mod:`mlsec.cli.exits`): 0 success, 1 a robustness threshold failed (or, with ``--strict``, a
sanity check warned), 2 bad usage or input, 3 internal error, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from mlsec.cli import attacks, audit, defend, scan, train
from mlsec.cli.common import Parser
from mlsec.cli.exits import run_command
from mlsec.core.distributed import stop

__all__ = ["COMMANDS", "build_parser", "main"]

# Each command's ``run``, in the order ``mlsec --help`` lists them.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "audit": audit.run,
    "scan": scan.run,
    "train": train.run,
    "defend": defend.run,
    "attacks": attacks.run,
}


def build_parser() -> Parser:
    """The ``mlsec`` parser with a subparser per command."""
    parser = Parser(prog="mlsec", description="Adversarial-robustness audits for PyTorch models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    audit.add_parser(sub)
    scan.add_parser(sub)
    train.add_parser(sub)
    defend.add_parser(sub)
    attacks.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mlsec`` command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run_command(COMMANDS[args.command], args, parser)
    finally:
        stop()  # leave a torchrun job cleanly


if __name__ == "__main__":
    sys.exit(main())
