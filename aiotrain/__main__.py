"""``python -m aiotrain`` is the ``aiotrain`` command."""

import sys

from aiotrain.cli.main import console

sys.exit(console())
