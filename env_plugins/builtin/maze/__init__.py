"""The built-in maze environment: see :mod:`.env`."""
