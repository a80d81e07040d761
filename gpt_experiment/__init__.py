"""
# gpt_experiment

A GPT language model trained as a labml experiment. `Configs` ([configs](configs.html)) holds
the whole experiment as labml configurations, and its loop is the [trainer](trainer.html)'s;
`train(overrides)` ([training](training.html)) trains it; `gpt-train` (`python -m
gpt_experiment.main`) and the other commands are in [cli](cli.html).

The names below are imported on first use, so that the command lines answer `--help` without
importing torch.
"""

from .errors import UserError

__all__ = ['Configs', 'UserError', 'train']


def __getattr__(name):
    if name == 'Configs':
        from .configs import Configs
        return Configs
    if name == 'train':
        from .training import train
        return train
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
