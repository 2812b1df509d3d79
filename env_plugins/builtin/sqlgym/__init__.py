"""The built-in sqlgym environment: see :mod:`.env`."""
