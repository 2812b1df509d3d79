"""Evaluation suites: which environments, tasks, samples and turn budgets ``gymux eval`` runs.

A suite is a TOML file::

    name = "my-suite"
    split = "test"        # default split for every env
    tasks = 10            # first N tasks of the split (omit for all)
    samples = 1           # samples per task (n of Avg@n / Pass@n)
    seed = 0

    [sampling]            # free-form; given to model policies (openai / sglang) as options
    temperature = 0.0

    [[envs]]
    id = "maze"
    max_turns = 15        # optional per-env overrides: split, tasks, samples, max_turns

    [[envs]]              # an AgentGym server, driven over HTTP (gymux.env_plugins.agentgym.client)
    id = "agentgym/webshop"
    url = "http://127.0.0.1:36001"
    tasks = 200           # AgentGym indices first_task .. first_task + 199 (first_task = 0)

Built-in suites (``smoke``, ``agenteval-offline``) are TOML files shipped in this package
(``gymux/eval/suites/<name>.toml``), read with :mod:`importlib.resources`.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Annotated

import msgspec

from gymux.errors import SuiteError

__all__ = ["BUILTIN_SUITES", "Suite", "SuiteEnv", "SuiteError", "load_suite", "parse_suite"]

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
SamplingValue = str | int | float | bool | list[str]


class SuiteEnv(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: str
    split: str | None = None
    tasks: PositiveInt | None = None
    samples: PositiveInt | None = None
    max_turns: PositiveInt | None = None
    #: An AgentGym server to drive (``id = "agentgym/<env>"``): its base URL, the dialect
    #: (default: from the env name) and the first AgentGym task index; ``tasks`` (here or
    #: suite-wide) says how many consecutive indices from ``first_task`` are run.
    url: str | None = None
    dialect: str | None = None
    first_task: Annotated[int, msgspec.Meta(ge=0)] = 0


class Suite(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    split: str = "test"
    #: First N tasks of each env's split; ``None``: the whole split.
    tasks: PositiveInt | None = None
    samples: PositiveInt = 1
    seed: int = 0
    sampling: dict[str, SamplingValue] = msgspec.field(default_factory=dict)
    envs: list[SuiteEnv] = msgspec.field(default_factory=list)

    def env_split(self, env: SuiteEnv) -> str:
        return env.split or self.split

    def env_tasks(self, env: SuiteEnv) -> int | None:
        return env.tasks if env.tasks is not None else self.tasks

    def env_samples(self, env: SuiteEnv) -> int:
        return env.samples if env.samples is not None else self.samples


def _read_builtin_suites() -> dict[str, str]:
    """``name -> TOML text`` of the suites shipped as package data (``gymux/eval/suites``)."""
    folder = resources.files("gymux.eval").joinpath("suites")
    found = {
        entry.name.removesuffix(".toml"): entry.read_text(encoding="utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith(".toml")
    }
    # smoke first: the one to try; the rest by name.
    return dict(sorted(found.items(), key=lambda item: (item[0] != "smoke", item[0])))


#: The built-in suites' TOML texts by name (``suites/<name>.toml`` in this package).
BUILTIN_SUITES: Mapping[str, str] = MappingProxyType(_read_builtin_suites())


def parse_suite(text: str, *, source: str = "<suite>") -> Suite:
    """Parse suite TOML; errors name ``source`` and the key at fault."""
    try:
        suite = msgspec.toml.decode(text, type=Suite)
    except msgspec.ValidationError as exc:
        raise SuiteError(f"suite {source}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise SuiteError(f"suite {source}: invalid TOML: {exc}") from None
    if not suite.envs:
        raise SuiteError(f"suite {source}: `envs` is empty - at `$.envs`")
    ids = [env.id for env in suite.envs]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise SuiteError(f"suite {source}: env {dupes[0]!r} listed twice - at `$.envs`")
    for i, env in enumerate(suite.envs):
        where = f"at `$.envs[{i}]`"
        if env.url is None:
            if env.dialect is not None or env.first_task:
                raise SuiteError(f"suite {source}: `dialect`/`first_task` need `url` - {where}")
            continue
        if not env.id.startswith("agentgym/"):
            raise SuiteError(f"suite {source}: `url` needs an id like 'agentgym/<env>' - {where}")
        if not env.url.startswith(("http://", "https://")):
            raise SuiteError(f"suite {source}: `url` must start with http:// - {where}")
        if suite.env_tasks(env) is None:
            raise SuiteError(f"suite {source}: an AgentGym env needs `tasks = N` - {where}")
    return suite


def load_suite(name_or_path: str) -> Suite:
    """A built-in suite by name, or a TOML file by path."""
    if name_or_path in BUILTIN_SUITES:
        return parse_suite(BUILTIN_SUITES[name_or_path], source=name_or_path)
    path = Path(name_or_path)
    if not path.is_file():
        raise SuiteError(
            f"no suite {name_or_path!r} (built in: {', '.join(BUILTIN_SUITES)}; or a .toml path)"
        )
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SuiteError(f"suite {path}: cannot read: {exc}") from None
    return parse_suite(text, source=str(path))
