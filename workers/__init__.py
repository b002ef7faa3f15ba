"""Agent workers. litellm's import fetches a model cost map over the network unless told not to."""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
