"""
# gpt_experiment

A GPT language model trained as a labml experiment. `Configs` holds the whole experiment as
labml configurations; `gpt_experiment.train.main(overrides)` trains it. (`main` is not
exported here: `gpt_experiment.main` is the command-line module, and importing it would
replace a package attribute of the same name.)
"""

from .configs import Configs
from .errors import UserError

__all__ = ['Configs', 'UserError']
