"""``python -m aiotrain`` is the ``aiotrain`` command."""

import sys

from aiotrain.cli.main import main

sys.exit(main())
