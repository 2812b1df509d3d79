"""The SQLGym oracle: answers with the task's gold SQL."""

from __future__ import annotations

from gymux.env_plugins.builtin.sqlgym.benchmark import SqlBenchmark
from gymux.errors import PolicyError
from gymux.messages import PolicyRequest
from gymux.react import format_react

__all__ = ["SqlGymOracle"]


class SqlGymOracle:
    """Answers with the gold SQL of the request's task (no per-episode state)."""

    version = "sqlgym-gold-1"

    def __init__(self, benchmark: SqlBenchmark) -> None:
        self._bench = benchmark

    async def solve(self, request: PolicyRequest) -> str:
        if request.task_id is None or not 0 <= request.task_id < len(self._bench.questions):
            raise PolicyError(f"sqlgym oracle: unknown task id {request.task_id!r}")
        q = self._bench.questions[request.task_id]
        thought = f"The reference query for this {q.difficulty or 'question'} answers it."
        return format_react(thought, f"```sql\n{q.sql}\n```")
