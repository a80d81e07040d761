"""
# gpt_experiment

A GPT language model trained as a labml experiment. `Configs` ([configs](configs.html)) holds
the whole experiment as labml configurations; `train(overrides)` ([training](training.html))
trains it; `python -m gpt_experiment.main` ([main](main.html)) is the command line, and
[overrides](overrides.html) turns presets and `key=value` arguments into the overrides.
"""

from .configs import Configs
from .errors import UserError

__all__ = ['Configs', 'UserError', 'train']


def __getattr__(name):
    # `train` is imported on first use: imported here, it would import the run store and the
    # dashboard before `python -m gpt_experiment.runs` (or `.dashboard`) runs them as scripts.
    if name == 'train':
        from .training import train
        return train
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
