"""
# Training

`main(overrides)` is the experiment as a function: it creates a labml experiment, applies the
overrides to the defaults through `experiment.configs`, checks them, registers the model for
checkpoints, and trains. The command line ([main](main.html)) calls it; so can a notebook:

```python
from gpt_experiment.train import main
conf = main({'epochs': 1, 'transformer.n_layers': 2})
```
"""

import time
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Union

from labml import experiment, tracker

from . import cli, dashboard, summary, writers as writers_
from .configs import Configs, check_configs


def project_path() -> Optional[str]:
    """
    labml finds `.labml.yaml` (and with it `data/` and `logs/`) by walking up from the file that
    creates the experiment, which for an installed package is not the user's project. When the
    current directory is inside a labml project, use that instead.
    """
    cwd = Path.cwd().resolve()
    if any((d / '.labml.yaml').is_file() for d in (cwd, *cwd.parents)):
        return str(cwd)
    return None


def main(overrides: Optional[Dict[str, Any]] = None, *, name: str = 'gpt', comment: str = '',
         writers: Union[str, Iterable[str]] = writers_.DEFAULT) -> Configs:
    """Train a GPT with `overrides` applied to the defaults; returns the computed configs."""
    overrides = cli.check_overrides(Configs, overrides or {})
    writers = writers_.check_writers(writers)
    experiment.create(name=name, comment=comment, python_file=project_path(), writers=writers)
    # The dashboard, when one is configured and answers ([dashboard](dashboard.html)).
    dashboard_api = dashboard.connect(writers)
    conf = Configs()
    experiment.configs(conf, overrides)
    # Everything that can fail on bad input is computed before the run's folder is written.
    check_configs(conf)
    experiment.add_pytorch_models({'model': conf.model})
    _ = conf.optimizer
    # labml's tracker is a process-wide singleton: a second run in the same process (a
    # notebook) starts counting from zero again.
    tracker.set_global_step(0)
    run = experiment._experiment_singleton().run
    started = time.time()
    try:
        with experiment.start():
            conf.run()
    finally:
        seconds = time.time() - started
        page = dashboard.finish(dashboard_api, run.uuid)
    summary.report(run.run_path, tokens=tracker.get_global_step(), seconds=seconds, dashboard_url=page)
    return conf
