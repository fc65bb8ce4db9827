"""The ``mlsec`` command line: one module per command; exit codes 0 ok, 1 a threshold failed,
2 bad usage or input, 3 an internal consistency check failed, 130 interrupted.
"""

from mlsec.cli.app import main

__all__ = ["main"]
