"""The built-in babyai environment: see :mod:`.env`."""
