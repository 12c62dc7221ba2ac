"""``python -m nbdurable``: the ``nbdurable`` command (the worker starts resumes this way)."""

import sys

from nbdurable.cli import main

if __name__ == "__main__":
    sys.exit(main())
