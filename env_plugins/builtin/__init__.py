"""The built-in environments, one subpackage each (env, oracle, data). Loaded through the
``gymux.envs`` entry points; nothing in gymux imports them directly."""
