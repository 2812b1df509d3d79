"""The ``gymux`` command line: one module per subcommand, shared helpers in :mod:`.common`."""

from gymux.cli.main import console_main, main

__all__ = ["console_main", "main"]
