"""
# Where a run's tracked values go

labml sends every `tracker` value to its *writers*, chosen when the experiment is created:
`screen` (the console), `sqlite` (the run's `sqlite.db`), `web_api` (the [dashboard](dashboard.html)),
`tensorboard` (event files in the run's `tensorboard/` folder) and `file` (a text log). The
default is `screen,sqlite,web_api`; `--writers screen,sqlite,tensorboard` on the command line (or
`main(..., writers=...)`) chooses others. TensorBoard is an optional extra:
`pip install "gpt-experiment[tensorboard]"`, then `tensorboard --logdir logs`.

labml's TensorBoard writer sends scalars only; [`TensorBoardExtras`](#TensorBoardExtras), one
more labml writer beside it, sends the rest: the run's configs as hyperparameters (TensorBoard's
HPARAMS tab) and the sampled text (its TEXT tab).
"""

import importlib.util
from pathlib import Path
from typing import Any, Dict, Iterable, Set, Union

from . import labml_glue
from .errors import UserError

DEFAULT = ('screen', 'sqlite', 'web_api')
KNOWN = ('screen', 'sqlite', 'web_api', 'tensorboard', 'file')


def check_writers(writers: Union[str, Iterable[str]]) -> Set[str]:
    """`'screen,tensorboard'` or a collection of names, checked, as labml's set of writers."""
    names = [w.strip() for w in writers.split(',')] if isinstance(writers, str) else [str(w) for w in writers]
    names = [w for w in names if w]
    unknown = [w for w in names if w not in KNOWN]
    if unknown:
        raise UserError(f'unknown writer {unknown[0]!r}; choose from: {", ".join(KNOWN)}')
    if 'tensorboard' in names and importlib.util.find_spec('tensorboard') is None:
        raise UserError('the tensorboard writer needs TensorBoard: pip install "gpt-experiment[tensorboard]"')
    return set(names)


def hyperparameters(configs: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """
    labml's configs (`labml_glue.run_configs()`) as TensorBoard hyperparameters: the option's
    name for a key with options (labml names only those that were given), otherwise its value
    when a number, a string or a flag.
    """
    simple = (bool, int, float, str)
    params = {}
    for key, c in configs.items():
        value = c.get('value') if c.get('options') else c.get('computed')
        if isinstance(value, simple):
            params[key] = value
    return params


class TensorBoardExtras(labml_glue.TrackerWriter):
    """A labml writer for what its TensorBoard writer leaves out: hyperparameters and text."""

    def __init__(self, log_dir: Path, configs: Dict[str, Dict[str, Any]]):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(log_dir))
        # `run_name='.'` keeps them in the run's own folder (the default is a sub-folder)
        self.writer.add_hparams(hyperparameters(configs), {}, run_name='.')

    def write(self, *, global_step: int, indicators):
        for indicator in indicators.values():
            if isinstance(indicator, labml_glue.TextIndicator) and not indicator.is_empty():
                for value in indicator.get_values().values():
                    self.writer.add_text(indicator.name, str(value), global_step)

    def flush(self):
        self.writer.flush()
