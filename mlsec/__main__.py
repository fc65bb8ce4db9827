"""``python -m mlsec`` runs the command line."""

import os
import sys

# ``python -m`` puts the current folder first on sys.path, where a folder named like a dependency
# (``matplotlib/``, say) would shadow it for the whole run. mlsec imports a user's own modules
# from the current folder by itself (see mlsec.io.modules), so the folder comes off the path here.
if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from mlsec.cli import main

if __name__ == "__main__":
    sys.exit(main())
