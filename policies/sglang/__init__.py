"""SGLang: the token-exact client policy and the managed server launcher.

:mod:`.policy` (the policy) joins :mod:`.transport` (HTTP), :mod:`.routing` (several
servers: affinity, health, retries) and :mod:`.wire` (SGLang's request and answer shapes);
:mod:`.launch` runs an SGLang server as a managed subprocess.
"""

from gymux.policies.sglang.policy import SGLangPolicy, Strategy

__all__ = ["SGLangPolicy", "Strategy"]
