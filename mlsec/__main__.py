"""``python -m mlsec`` runs the command line."""

import sys

from mlsec.cli import main

sys.exit(main())
