"""Tools for plugin authors and embedders to use in their own tests."""
