"""Old import path of the SGLang client policy; see :mod:`gymux.policies.sglang.policy`."""

from gymux.policies.sglang.policy import SGLangPolicy, Strategy

__all__ = ["SGLangPolicy", "Strategy"]
