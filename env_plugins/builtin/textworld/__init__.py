"""The built-in textworld environment: see :mod:`.env`."""
