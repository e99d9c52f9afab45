"""The ``aiotrain`` command line (see ``aiotrain.cli.main``)."""
