"""The ``mlsec`` command line, one module per command.

Exit codes (:mod:`mlsec.cli.exits`): 0 ok, 1 a threshold failed, 2 bad usage or input, 3 internal
error, 130 interrupted.
"""

from mlsec.cli.app import main

__all__ = ["main"]
