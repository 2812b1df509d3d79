"""AgentEvol: behavioural cloning, then explore -> filter -> learn -> evaluate iterations.

``gymux evolve --config evolve.toml --out DIR`` (:mod:`gymux.cli.evolve`); the engine is
:class:`~gymux.evolve.pipeline.Evolve`. Needs the ``hf`` extra (torch, transformers).
"""

from gymux.evolve.config import EvolveConfig, load_evolve_config, parse_evolve_config
from gymux.evolve.pipeline import Evolve
from gymux.evolve.report import write_evolve_report

__all__ = [
    "Evolve",
    "EvolveConfig",
    "load_evolve_config",
    "parse_evolve_config",
    "write_evolve_report",
]
