"""
# gpt_experiment

A GPT language model trained as a labml experiment. `Configs` ([configs](configs.html)) holds
the whole experiment as labml configurations; `train(overrides)` ([training](training.html))
trains it; `python -m gpt_experiment.main` ([main](main.html)) is the command line, and
[overrides](overrides.html) turns presets and `key=value` arguments into the overrides.
"""

from .configs import Configs
from .errors import UserError
from .training import train

__all__ = ['Configs', 'UserError', 'train']
