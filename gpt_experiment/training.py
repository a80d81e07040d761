"""
# Training

`train(overrides)` is the experiment as a function: it creates a labml experiment, applies the
overrides to the defaults through `experiment.configs`, checks them, registers the model for
checkpoints, and trains. The command line ([main](main.html)) calls it; so can a notebook:

```python
from gpt_experiment import train
conf = train({'epochs': 1, 'transformer.n_layers': 2})
```
"""

import time
from typing import Any, Dict, Iterable, Optional, Union

from labml import experiment, tracker

from . import checkpoints, console, dashboard, distributed, finetune, labml_glue, runs, summary, tokenizers
from . import writers as writers_
from . import resume as resume_state
from .checks import check_configs
from .configs import Configs
from .errors import UserError
from .overrides import check_overrides, config_keys
from .runs import project_path


# What makes the tokenizer, which a resumed run cannot change
TOKENIZER_KEYS = ('tokenizer', 'bpe_vocab_size', 'bpe_train_bytes')


def configure(overrides: Dict[str, Any], run_tokenizer=None) -> Configs:
    """
    `Configs` with `overrides` applied to the defaults through labml, and every value checked:
    what `train` does before anything is written. It needs a labml experiment (`experiment.create`).
    `run_tokenizer` is the tokenizer of the run it continues from, kept as it is.
    """
    conf = Configs()
    conf._run_tokenizer = run_tokenizer
    experiment.configs(conf, check_overrides(Configs, overrides))
    check_configs(conf)
    distributed.check_batch(conf.batch_size)
    return conf


def compute_ahead(c: Configs):
    """
    Compute now every config that training reads. labml rewrites the run's `configs.yaml` (a
    pure-Python YAML dump of every key, about a fifth of a second) each time a config is first
    computed after `experiment.start()`; computed lazily, the first steps would pay for two
    dozen of them. The loop count waits: it depends on the checkpoint a resumed run loads at
    the start.
    """
    for key in dir(c):
        if key not in ('loop_count', 'training_loop'):
            getattr(c, key)


def train(overrides: Optional[Dict[str, Any]] = None, *, name: Optional[str] = None, comment: str = '',
         resume: Optional[str] = None, checkpoint: Optional[int] = None,
         writers: Union[str, Iterable[str]] = writers_.DEFAULT, verbose: bool = False) -> Configs:
    """
    Train a GPT with `overrides` applied to the defaults; returns the computed configs.
    `resume` (a run uuid) continues that run from its newest complete checkpoint, or from
    `checkpoint`, as a new run ([resume](resume.html)). Under torchrun, every process calls
    this ([distributed](distributed.html)). `writers` are labml's ([writers](writers.html)); `verbose`
    shows labml's `Prepare <config>` sections ([console](console.html)).
    """
    console.install(verbose)
    overrides = check_overrides(Configs, overrides or {})
    writers = writers_.check_writers(writers)
    if name is not None and not checkpoints.is_plain_name(name):
        raise UserError(f'--name must be a plain name (a folder under logs/), got {name!r}')
    world = distributed.setup()
    ranks = dict(uuid=distributed.shared_uuid(), distributed_rank=world.rank,
                 distributed_world_size=world.size if world.is_distributed else 0,
                 writers=writers if world.is_main else set())
    experiment.create(name=name or 'gpt', comment=comment, python_file=project_path(), **ranks)
    source, parent, step, run_tokenizer = None, None, None, None
    if overrides.get('init_from'):
        # A new run from another run's weights, with its tokenizer and shape ([finetune](finetune.html)).
        if resume is not None:
            raise UserError('init_from starts a new run from a run\'s weights and --resume continues a run; give one')
        source = finetune.find_source(overrides['init_from'])
        overrides = finetune.with_source_shape(source, overrides)
        run_tokenizer = tokenizers.load(source.run)
    if resume is not None:
        parent = runs.find_run(resume)
        step = int(runs.find_checkpoint(parent, checkpoint).name)
        if world.is_main and runs.status(parent) != 'running':
            # what a killed writer of the parent left half written
            checkpoints.remove_partial_checkpoints(parent)
        # The run's tokenizer, as it saved it: the corpus is encoded with it, never rebuilt.
        run_tokenizer = tokenizers.load(parent)
        given = check_overrides(Configs, runs.given_configs(parent))
        defaults = config_keys(Configs)
        for key in TOKENIZER_KEYS:
            if key in overrides and overrides[key] != given.get(key, defaults[key].default):
                raise UserError(f'{key} cannot change when resuming: run {parent.name} keeps its tokenizer.json')
        overrides = {**given, **overrides}
        if name is None and parent.parent.name != 'gpt':
            # the continuation goes beside its parent
            experiment.create(name=parent.parent.name, comment=comment, python_file=project_path(), **ranks)
    elif checkpoint is not None:
        raise UserError('--checkpoint needs --resume RUN_UUID')
    # Everything that can fail on bad input is computed before the run's folder is written.
    conf = configure(overrides, run_tokenizer=run_tokenizer)
    if source is not None:
        finetune.load_weights(conf.model, source)
    checkpoints.install({
        'model': checkpoints.model_saver('model', conf.model),
        'training': checkpoints.TorchStateSaver('training', lambda: resume_state.training_state(conf),
                                                lambda state: resume_state.load_training_state(conf, state)),
    }, resumed_step=step)
    compute_ahead(conf)
    # labml's tracker is a process-wide singleton: a second run in the same process (a
    # notebook) starts counting from zero again, or from the checkpoint it resumes.
    tracker.set_global_step(step or 0)
    experiment.load(parent.name if parent else None, step)
    # The dashboard, when one is configured and answers ([dashboard](dashboard.html)).
    dashboard_api = dashboard.connect(writers if world.is_main else set())
    run_uuid, run_path = labml_glue.run_uuid(), labml_glue.run_path()
    started = time.time()
    try:
        with labml_glue.start(daemon_sender=dashboard_api is not None):
            # in the dashboard's runs list while it trains
            dashboard.claim_soon(dashboard_api, run_uuid)
            if 'tensorboard' in writers and world.is_main:
                labml_glue.add_tracker_writer(writers_.TensorBoardExtras(run_path / 'tensorboard', labml_glue.run_configs()))
            conf.run()
    finally:
        seconds = time.time() - started
        page = dashboard.finish(dashboard_api, run_uuid)
    if world.is_main:
        summary.report(run_path, tokens=tracker.get_global_step() - (step or 0), seconds=seconds,
                       dashboard_url=page)
    return conf
