"""The built-in lmrl-wordle environment (AgentGym's Wordle, LMRL-Gym's game): see :mod:`.env`."""
