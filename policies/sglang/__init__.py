"""SGLang: the token-exact client policy and the managed server launcher."""

from gymux.policies.sglang.client import *  # noqa: F403
from gymux.policies.sglang.client import __all__ as __all__
