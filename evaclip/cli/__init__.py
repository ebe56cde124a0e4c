"""Command-line interface: ``evaclip <command> ...``. See :mod:`evaclip.cli.main`."""
