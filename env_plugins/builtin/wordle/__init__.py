"""The built-in wordle environment: see :mod:`.env`."""
