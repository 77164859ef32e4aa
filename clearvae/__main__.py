"""``python -m clearvae`` runs the command line interface."""

import sys

from clearvae.cli import main

sys.exit(main())
