"""gymux: an async runtime for running LLM agents over interactive text environments."""

__version__ = "0.1.0"
