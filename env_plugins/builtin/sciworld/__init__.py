"""The built-in sciworld environment: see :mod:`.env`."""
