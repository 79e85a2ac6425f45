"""``python -m clap4cl`` (and ``torchrun -m clap4cl``): the ``clap4cl`` command line."""
import sys

from clap4cl.cli import main

if __name__ == "__main__":
    sys.exit(main())
