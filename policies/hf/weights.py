"""Reading new weights for :meth:`gymux.policies.hf.HFPolicy.update_weights`.

A source is a folder of ``*.safetensors`` files (what ``save_pretrained`` writes, sharded or
not), one ``.safetensors`` file, or a mapping of tensor names to tensors (a trainer's
``model.state_dict()``). Pickled checkpoints (``.bin``, ``.pt``) are refused: loading them
runs code. Reading blocks: call :func:`read_state_dict` from a worker thread.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gymux.errors import PolicyError

__all__ = ["WeightSource", "read_state_dict"]

#: What ``update_weights`` accepts.
WeightSource = str | os.PathLike[str] | Mapping[str, Any]


def read_state_dict(source: WeightSource) -> dict[str, Any]:
    """The tensors of ``source`` by name (see the module docstring)."""
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise PolicyError(f"no *.safetensors file in {str(path)!r}")
    elif path.is_file():
        if path.suffix != ".safetensors":
            raise PolicyError(
                f"{str(path)!r}: only safetensors weights are read (a folder of "
                "*.safetensors files, or one such file)"
            )
        files = [path]
    else:
        raise PolicyError(f"no weights at {str(path)!r}")
    try:
        from safetensors.torch import load_file
    except ImportError:  # pragma: no cover - transformers depends on safetensors
        raise PolicyError("reading weights needs safetensors: pip install 'gymux[hf]'") from None
    state: dict[str, Any] = {}
    for file in files:
        try:
            state.update(load_file(str(file)))
        except (OSError, ValueError, RuntimeError) as exc:
            raise PolicyError(f"cannot read weights from {str(file)!r}: {exc}") from None
    return state
