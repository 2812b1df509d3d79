"""Scale-out: gymux on a Ray cluster (``pip install 'gymux[ray]'``).

:class:`RayRuntime` is a driver with the :class:`~gymux.runtime.Runtime` embedding API
(``async with``, ``submit``, ``run``, ``subscribe``, run handles, sinks, ``out=``) whose
episodes run on Ray actors, each hosting an embedded ``Runtime`` over shards of the
workload's task ids. :class:`RayExecutor` says where and how (cluster address, workers,
resources per env). Ray itself is imported only when a ``RayRuntime`` starts.
"""

from __future__ import annotations

from gymux.scale.ray_executor import (
    DEFAULT_ENV_RESOURCES,
    EnvResources,
    RayExecutor,
    RayRuntime,
    ScaleError,
    ScaleStats,
)

__all__ = [
    "DEFAULT_ENV_RESOURCES",
    "EnvResources",
    "RayExecutor",
    "RayRuntime",
    "ScaleError",
    "ScaleStats",
]
