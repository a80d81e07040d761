"""
# Where a run's tracked values go

labml sends every `tracker` value to its *writers*, chosen when the experiment is created:
`screen` (the console), `sqlite` (the run's `sqlite.db`), `web_api` (the [dashboard](dashboard.html)),
`tensorboard` (event files in the run's `tensorboard/` folder) and `file` (a text log). The
default is `screen,sqlite,web_api`; `--writers screen,sqlite,tensorboard` on the command line (or
`main(..., writers=...)`) chooses others. TensorBoard is an optional extra:
`pip install "gpt-experiment[tensorboard]"`, then `tensorboard --logdir logs`.
"""

import importlib.util
from typing import Iterable, Set, Union

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
