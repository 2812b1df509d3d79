"""One JVM running ScienceWorld's simulator, driven through the jar's ``PythonInterface``."""

from __future__ import annotations

from typing import Any

from gymux.env_plugins.builtin.sciworld.jvm import JavaProcess
from gymux.env_plugins.builtin.sciworld.tasks import (
    INSTALL_HINT,
    SCIENCEWORLD_VERSION,
    SIMPLIFICATIONS,
)
from gymux.env_plugins.protocol import EnvError, TransientEnvError

__all__ = ["JAVA_OPTIONS", "Simulator", "scienceworld_module"]

#: JVM options for the simulator (see the module docstring: deterministic object order).
JAVA_OPTIONS: tuple[str, ...] = ("-XX:+UnlockExperimentalVMOptions", "-XX:hashCode=2")


def scienceworld_module() -> Any:
    """The ``scienceworld`` module, checked for the pinned version."""
    try:
        import scienceworld  # type: ignore[import-untyped]
    except ImportError as exc:
        raise EnvError(f"the sciworld env needs the scienceworld package: {INSTALL_HINT}") from exc
    version = getattr(scienceworld, "__version__", "?")
    if version != SCIENCEWORLD_VERSION:
        raise EnvError(
            f"sciworld task ids are pinned to scienceworld=={SCIENCEWORLD_VERSION}, found "
            f"{version}: {INSTALL_HINT}"
        )
    return scienceworld


class Simulator:
    """One JVM running ScienceWorld, and the jar's ``PythonInterface`` in it."""

    def __init__(self, java: JavaProcess, server: Any) -> None:
        self.java = java
        self.server = server

    @classmethod
    def start(cls) -> Simulator:
        scienceworld_module()
        from scienceworld.constants import BASEPATH, JAR_PATH  # type: ignore[import-untyped]

        java = JavaProcess.start(JAR_PATH, cwd=BASEPATH, java_options=JAVA_OPTIONS)
        try:
            server = java.jvm.scienceworld.runtime.pythonapi.PythonInterface()
        except Exception as exc:
            # A JVM that died while starting (killed by pid, out of memory) is worth a
            # retry on a fresh one; one that is alive but failed is a real error.
            exit_code = java.exit_code()
            java.close()
            if exit_code is not None:
                raise TransientEnvError(
                    f"ScienceWorld's JVM (pid {java.pid}) died while starting "
                    f"(exit code {exit_code})"
                ) from exc
            raise EnvError(f"ScienceWorld's JVM failed to start: {exc!r}") from exc
        except BaseException:
            java.close()
            raise
        return cls(java, server)

    def load(self, name: str, variation: int, *, gold: bool = False) -> None:
        self.server.load(name, variation, SIMPLIFICATIONS, gold)

    def gold_actions(self, name: str, variation: int) -> list[str]:
        self.load(name, variation, gold=True)
        return [str(a) for a in self.server.getGoldActionSequence()]

    def close(self) -> None:
        self.java.close()
