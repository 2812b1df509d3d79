"""The one error tree: every error gymux raises on purpose is a :class:`GymuxError`.

Callers catch ``GymuxError`` to catch everything gymux reports; the CLI maps each branch to
an exit code (see :mod:`gymux.cli.common`). Classes that callers used to catch as a builtin
(``ValueError``) keep it as a second parent. Exceptions that are not ``GymuxError`` are bugs
and are never reported as bad input.

The tree::

    GymuxError
    ├── ConfigError (ValueError)          a config file, suite or option is invalid
    │   ├── SuiteError                    an eval suite is missing or invalid
    │   └── UnknownSplitError (KeyError)  an env has no task split of that name
    ├── PluginError                       an env plugin is missing, broken or not installed
    ├── EnvError                          an env failed (episode ends ``env_error``)
    │   └── TransientEnvError             ... worth retrying on a fresh instance
    ├── ActionParseError (ValueError)     the model's text holds no valid action
    ├── PolicyError                       a policy could not answer (``policy_error``)
    ├── UnknownPolicyError (ValueError)   no policy of that name for that env
    ├── PolicyOptionsError (ValueError)   a policy's options are missing or invalid
    ├── SinkError                         a sink could not persist trajectories
    ├── ScaleError                        Ray is missing, or the cluster cannot run the work
    └── StoreError                        the append-only store
        ├── StoreLockedError              another writer holds the lock
        ├── RecordTooLargeError (ValueError)
        ├── StoreClosedError              the writer is closed or failed
        ├── CorruptionError               damaged data followed by valid data
        ├── DamagedStreamError            sealed segments damaged, no salvage asked for
        └── AgentTrajError (ValueError)   an AgentTraj file to import is malformed
"""

from __future__ import annotations

__all__ = [
    "ActionParseError",
    "AgentTrajError",
    "ConfigError",
    "CorruptionError",
    "DamagedStreamError",
    "EnvError",
    "GymuxError",
    "PluginError",
    "PolicyError",
    "PolicyOptionsError",
    "RecordTooLargeError",
    "ScaleError",
    "SinkError",
    "StoreClosedError",
    "StoreError",
    "StoreLockedError",
    "SuiteError",
    "TransientEnvError",
    "UnknownPolicyError",
    "UnknownSplitError",
]


class GymuxError(Exception):
    """The root of every error gymux raises on purpose."""


class ConfigError(GymuxError, ValueError):
    """A configuration file or value is invalid; the message names the key."""


class SuiteError(ConfigError):
    """A suite file is missing or invalid; the message names the file and the key."""


class UnknownSplitError(ConfigError, KeyError):
    """An env has no task split of that name; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError's str() is the repr of its key: show the message
        return str(self.args[0]) if self.args else ""


class PluginError(GymuxError):
    """An environment plugin is missing, failed to load, or breaks the protocol."""

    def __init__(self, env_id: str, cause: str) -> None:
        super().__init__(f"env plugin {env_id!r}: {cause}")
        self.env_id = env_id
        self.cause = cause


class EnvError(GymuxError):
    """An environment failed. The episode ends with finish reason ``env_error``."""


class TransientEnvError(EnvError):
    """An environment failure worth retrying (a flaky backend, a busy resource).

    The scheduler reruns the whole episode on a fresh instance, with backoff, up to
    ``RuntimeConfig.env_retries`` times.
    """


class ActionParseError(GymuxError, ValueError):
    """The model's output holds no valid action.

    The message is shown to the model as a corrective observation; the episode goes on.
    """


class PolicyError(GymuxError):
    """The policy could not answer. The episode ends with finish reason ``policy_error``."""


class UnknownPolicyError(GymuxError, ValueError):
    """No policy of that name, or it does not exist for that env."""


class PolicyOptionsError(GymuxError, ValueError):
    """A policy's options are missing or invalid."""


class SinkError(GymuxError):
    """A sink could not persist trajectories. This stops the run: data would be lost."""


class StoreError(GymuxError):
    """Base class of store errors."""


class StoreLockedError(StoreError):
    """Another writer holds the stream's lock."""


class RecordTooLargeError(StoreError, ValueError):
    """A payload exceeds the stream's ``max_record_bytes``."""


class StoreClosedError(StoreError):
    """The writer is closed, or failed (an fsync error is fatal and never retried)."""


class CorruptionError(StoreError):
    """A damaged record followed by valid data: never skipped silently.

    ``segment`` is the segment file, ``offset`` the byte position of the damage and
    ``resume_offset`` the position of the next valid record (``None`` if unknown).
    """

    def __init__(
        self, segment: str, offset: int, reason: str, resume_offset: int | None = None
    ) -> None:
        where = f"{segment} at byte {offset}"
        tail = f"; valid data resumes at byte {resume_offset}" if resume_offset is not None else ""
        super().__init__(f"corrupt record in {where}: {reason}{tail}")
        self.segment = segment
        self.offset = offset
        self.reason = reason
        self.resume_offset = resume_offset


class DamagedStreamError(StoreError):
    """Sealed segments hold damaged ranges and salvage was not asked for (``compact``)."""


class AgentTrajError(StoreError, ValueError):
    """An AgentTraj input is malformed; the message names the file, record and field."""


class ScaleError(GymuxError):
    """Ray is missing, the cluster cannot host the workers, or every worker died."""
