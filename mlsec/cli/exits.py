"""The exit codes of ``mlsec`` and how an error becomes one: the only place that decides either.

A library :class:`~mlsec.errors.InputError` names the argument at fault in the library's terms
(``subject="batch_size"``); the command line shows its own flag instead (``--batch-size: ...``).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Collection, Mapping

from mlsec.core.distributed import current
from mlsec.core.text import printable
from mlsec.errors import InputError, SoundnessError

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "error_message",
    "flag_for",
    "options_of",
    "run_command",
]

EXIT_OK = 0  # the command did its work; every threshold holds
EXIT_FAILED = 1  # a robustness threshold failed (or, with --strict, a sanity check warned)
EXIT_USAGE = 2  # bad usage or input: a one-line message says what was wrong
EXIT_INTERNAL = 3  # a bug in mlsec or an exception in the user's own code: the traceback is shown
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports a process ended by SIGINT

# Library subjects whose flag is not "--" + the subject with "_" written "-", for every command.
_FLAGS = {
    "thresholds": "--fail-under/--max-drop",
    "min_accuracy": "--fail-under",
    "sanity_checks": "--no-checks",
    "x": "--data",
    "y": "--data",
    "labels": "--data",
    "inputs": "--data",
}

# ... and for one command: a run folder is ``train --out`` but ``defend train --run``.
_COMMAND_FLAGS: Mapping[str, Mapping[str, str]] = {
    "train": {"folder": "--out", "held_out": "--val", "val_split": "--val-split"},
    "defend": {"folder": "--run", "purifier": "defense", "name": "defense"},
}


def flag_for(subject: str, command: str | None, flags: Collection[str]) -> str | None:
    """The command line's name of the argument a library error calls ``subject``.

    Args:
        subject: the library's name (``"batch_size"``, ``"checkpoint"``).
        command: the subcommand that ran (``"audit"``, ``"train"``, ...).
        flags: the options and positional names of that command; a name found nowhere in them
            is not shown as a flag.

    Returns:
        The flag (``"--batch-size"``), or ``None`` when the command has none for ``subject``.

    Example:
        >>> flag_for("batch_size", "audit", {"--batch-size", "--eps"})
        '--batch-size'
        >>> flag_for("folder", "train", {"--out"}), flag_for("console", "audit", {"--eps"})
        ('--out', None)

    """
    own = _COMMAND_FLAGS.get(command or "", {})
    flag = own.get(subject) or _FLAGS.get(subject) or "--" + subject.replace("_", "-")
    return flag if all(part in flags for part in flag.split("/")) else None


def error_message(error: InputError, command: str | None, flags: Collection[str]) -> str:
    """The one line shown for ``error``: ``--flag: detail``, or the library's own text."""
    if error.subject:
        flag = flag_for(error.subject, command, flags)
        if flag is not None:
            return f"{flag}: {error.detail}"
    return str(error)


def options_of(parser: argparse.ArgumentParser, command: str | None = None) -> set[str]:
    """Every option string and positional name of ``parser`` and the subcommands below it.

    Args:
        parser: a parser.
        command: only this subcommand of ``parser`` (at the first level) is included.

    """
    names: set[str] = set()
    # argparse keeps no public list of a parser's arguments; _actions is stable since Python 3.2.
    for action in parser._actions:
        names.update(action.option_strings or [action.dest])
        if isinstance(action.choices, dict):  # a subcommand's parsers, by name
            for name, child in action.choices.items():
                if isinstance(child, argparse.ArgumentParser) and command in (None, name):
                    names |= options_of(child)
    return names


def run_command(
    command: Callable[[argparse.Namespace], int],
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
) -> int:
    """Run ``command`` and turn what it raises into an exit code and a line on stderr.

    Args:
        command: the subcommand's ``run``.
        args: the parsed options (``args.command`` names the subcommand).
        parser: the ``mlsec`` parser; the options of the subcommand name an error's subject.

    """
    try:
        return command(args)
    except InputError as error:
        # In a job of several processes every rank stops with the same error; rank 0 says it.
        if current().is_main:
            message = error_message(error, args.command, options_of(parser, args.command))
            print(f"mlsec: {printable(message)}", file=sys.stderr)
        return EXIT_USAGE
    except SoundnessError as error:  # a certificate broken by an attack: a bug, said in a line
        if current().is_main:
            print(
                f"mlsec: soundness check failed: {printable(str(error))}; exit 3", file=sys.stderr
            )
        return EXIT_INTERNAL
    except KeyboardInterrupt:
        print("mlsec: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as error:  # mlsec never exits from inside a command: user code did
        print(
            f"mlsec: user code called sys.exit({error.code!r}) during the run, which mlsec does "
            "not take as a result; remove the call from the model or data code",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except Exception:  # a bug in mlsec (or the user's model): keep the traceback, not exit 1
        traceback.print_exc()
        print("mlsec: internal error (the traceback above says where); exit 3", file=sys.stderr)
        return EXIT_INTERNAL
