"""The built-in textcraft environment: see :mod:`.env`."""
