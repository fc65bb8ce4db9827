"""``python -m mlsec`` runs the command line."""

import sys

from mlsec.cli import main

if __name__ == "__main__":
    sys.exit(main())
