"""
# Training

`train(overrides)` is the experiment as a function: it creates a labml experiment, applies the
overrides to the defaults through `experiment.configs`, checks them, and trains. The command
line calls it ([cli](cli.html)); so can a notebook:

```python
from gpt_experiment import train
conf = train({'epochs': 1, 'transformer.n_layers': 2})
```

A run can continue another, from a checkpoint that the [run store](runs.html) finds and checks:

* **`--resume RUN`** continues that run, as a new labml run that names its parent (`load_run`
  in its `run.yaml`) beside it: its weights, the optimizer's state, where the data stands and
  the random generators, from the newest complete checkpoint or `--checkpoint STEP`. The
  configuration is the parent's, with the `key=value` given on top; the parent is never
  written to. Resumed from anywhere, the run trains exactly what the parent would have
  ([trainer](trainer.html)).
* **`init_from=RUN[:STEP]`** starts a *new* run from that checkpoint's weights (nanoGPT's
  `init_from`, for fine-tuning): the weights, the tokenizer and the model's shape are the
  source's; the optimizer, the schedule, the data order and the step counter start fresh. The
  run records `init_from: <uuid>:<step>`, whatever prefix was typed.
* **`init_from=hf:DIR`** does the same from a local Hugging Face GPT-2 or OpenAI GPT folder
  (nanoGPT's `init_from=gpt2`, offline), read by [hf](hf.html); `seq_len` may be shorter than
  the folder's context. The run records `init_from: hf:<absolute folder>`.

Either way the run keeps what makes its model: the keys of `MODEL_KEYS` ([configs](configs.html))
cannot change, which is one line, and the corpus is encoded with the run's `tokenizer.json`.
Everything that can fail on bad input is done before the run's folder is written.

Where tracked values go is labml's writers: `screen` (the console), `sqlite` (the run's
`sqlite.db`), `web_api` (the [dashboard](dashboard.html)), `tensorboard` and `file`;
[`TensorBoardExtras`](#TensorBoardExtras) adds the configs and the samples to TensorBoard.
"""

import contextlib
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, NamedTuple, Optional, Set, Union

from labml import experiment, logger, tracker
from labml.logger import Text

from . import checkpoints, commands, console, dashboard, distributed, files, hf, labml_glue, reports, runs, tokenizers
from .checks import check_configs
from .configs import MODEL_KEYS, Configs, model_keys
from .errors import UserError
from .overrides import check_overrides, config_keys



class Start(NamedTuple):
    """The checkpoint a run starts from: one to resume, or the weights of `init_from`."""
    run: Path
    checkpoint: Path
    # The training state of a checkpoint to resume; `None` for `init_from`
    state: Optional[Dict[str, Any]]

    @property
    def name(self) -> str:
        """`<uuid>:<step>`, as a run started from it records it."""
        return f'{runs.uuid_of(self.run)}:{self.checkpoint.name}'

    def tokenizer(self):
        """The run's tokenizer, which the new run encodes its corpus with: the one its weights learned."""
        return runs.tokenizer(self.run, self.checkpoint)

    def load_weights(self, model):
        runs.load_weights(model, self.checkpoint, ': the model cannot change')


def _keep_shape(had: Dict[str, Any], keys: Iterable[str], overrides: Dict[str, Any], source: str, how: str):
    """Refuse values of `keys` that contradict what `source` had."""
    for key in keys:
        if key in overrides and str(overrides[key]) != str(had[key]):
            raise UserError(f'{key}={overrides[key]} contradicts {source}, which has {key}={had[key]}: {how}')


def _keep_model(run_dir: Path, overrides: Dict[str, Any], how: str):
    """Refuse values of `MODEL_KEYS` that contradict what run `run_dir` had."""
    declared = config_keys(Configs)
    recorded = runs.config_values(run_dir)
    had = {k: declared[k].default if recorded.get(k) is None else recorded[k] for k in MODEL_KEYS + ('seq_len',)}
    _keep_shape(had, model_keys(had['transformer.src_embed']), overrides, f'run {runs.uuid_of(run_dir)}', how)


def resumed(run: str, step: Optional[int], overrides: Dict[str, Any]) -> tuple:
    """The checkpoint `--resume` continues from, and the run's configs with `overrides` on top."""
    run_dir, checkpoint = runs.find(run, step, need=(checkpoints.WEIGHTS, checkpoints.TRAINING))
    state = runs.training_state(checkpoint)
    given = runs.given_configs(run_dir)
    _keep_model(run_dir, overrides, 'a resumed run keeps its model and its tokenizer.json')
    return Start(run_dir, checkpoint, state), {**given, **overrides}


def initialised(overrides: Dict[str, Any]) -> tuple:
    """
    The checkpoint `init_from=RUN[:STEP]` starts from, or the Hugging Face folder of
    `init_from=hf:DIR`, and the source's model keys under `overrides`.
    """
    init_from = overrides['init_from']
    if init_from.startswith('hf:'):
        if not init_from[3:]:
            raise UserError('init_from=hf: needs a folder: init_from=hf:DIR')
        source = hf.source(init_from[3:], seq_len=overrides.get('seq_len'))
        _keep_shape(source.shape, set(source.shape) - {'seq_len'}, overrides, source.name,
                    "init_from takes the model's shape from the source")
        return source, {**overrides, **source.shape, 'init_from': source.name}
    try:
        run_dir, checkpoint = runs.find_ref(init_from)
    except UserError as e:
        raise UserError(f'init_from: {e}') from None
    _keep_model(run_dir, overrides, "init_from takes the model's shape from the source run")
    given = runs.given_configs(run_dir)
    start = Start(run_dir, checkpoint, None)
    shape = {k: v for k, v in given.items() if k in MODEL_KEYS + ('seq_len',) and
             (k != 'seq_len' or 'seq_len' not in overrides)}
    return start, {**overrides, **shape, 'init_from': start.name}


def configure(overrides: Dict[str, Any], run_tokenizer=None) -> Configs:
    """
    `Configs` with `overrides` (already checked) applied to the defaults through labml, and
    every value checked: what `train` does before anything is written. It needs a labml
    experiment (`experiment.create`). `run_tokenizer` is the tokenizer of the run it continues.
    """
    conf = Configs()
    conf._run_tokenizer = run_tokenizer
    experiment.configs(conf, overrides)
    check_configs(conf)
    distributed.check_batch(conf.batch_size)
    return conf


def compute_ahead(c: Configs):
    """
    Compute now every config that training reads. labml rewrites the run's `configs.yaml` (a
    pure-Python YAML dump of every key, about a fifth of a second) each time a config is first
    computed after `experiment.start()`; computed lazily, the first steps would pay for two
    dozen of them. labml_helpers' loop machinery, which the trainer does not use, is left alone.
    """
    for key in dir(c):
        if key not in ('loop_count', 'loop_step', 'training_loop', 'trainer', 'validator'):
            getattr(c, key)


def check_writers(writers: Union[str, Iterable[str]]) -> Set[str]:
    """`'screen,tensorboard'` or a collection of names, checked, as labml's set of writers."""
    names = [w.strip() for w in writers.split(',')] if isinstance(writers, str) else [str(w) for w in writers]
    names = [w for w in names if w]
    unknown = [w for w in names if w not in commands.KNOWN_WRITERS]
    if unknown:
        raise UserError(f'unknown writer {unknown[0]!r}; choose from: {", ".join(commands.KNOWN_WRITERS)}')
    if 'tensorboard' in names and importlib.util.find_spec('tensorboard') is None:
        raise UserError('the tensorboard writer needs TensorBoard: pip install "gpt-experiment[tensorboard]"')
    return set(names)


def train(overrides: Optional[Dict[str, Any]] = None, *, name: Optional[str] = None, comment: str = '',
          resume: Optional[str] = None, checkpoint: Optional[int] = None,
          writers: Union[str, Iterable[str]] = commands.DEFAULT_WRITERS, verbose: bool = False) -> Configs:
    """
    Train a GPT with `overrides` applied to the defaults; returns the computed configs.
    `resume` (a run uuid or prefix) continues that run from its newest complete checkpoint, or
    from `checkpoint`. Under torchrun, every process calls this ([distributed](distributed.html)).
    `verbose` shows labml's `Prepare <config>` sections ([console](console.html)).
    """
    console.install(verbose)
    overrides = check_overrides(Configs, overrides or {})
    writers = check_writers(writers)
    if name is not None and not files.is_plain_name(name):
        raise UserError(f'--name must be a plain name (a folder under logs/), got {name!r}')
    if checkpoint is not None and resume is None:
        raise UserError('--checkpoint needs --resume RUN_UUID')
    if resume is not None and overrides.get('init_from'):
        raise UserError("init_from starts a new run from a run's weights and --resume continues a run; give one")
    python_file = runs.project_path()
    start = None
    if resume is not None:
        start, overrides = resumed(resume, checkpoint, overrides)
    elif overrides.get('init_from'):
        start, overrides = initialised(overrides)
    run_tokenizer = start.tokenizer() if start is not None else None
    world = distributed.setup()
    # A resumed run goes beside its parent, under its experiment's name.
    name = name or (start.run.parent.name if start is not None and start.state is not None else 'gpt')
    # `screen` is the display of the trainer's progress ([console](console.html)), not labml's own
    experiment.create(name=name, comment=comment, python_file=python_file, uuid=distributed.shared_uuid(),
                      distributed_rank=world.rank, distributed_world_size=world.size if world.is_distributed else 0,
                      writers=writers - {'screen'} if world.is_main else set())
    with contextlib.ExitStack() as held:
        if isinstance(start, Start):
            # the checkpoint is not pruned away while this run reads it
            held.enter_context(checkpoints.reading(start.checkpoint))
        conf = configure(overrides, run_tokenizer=run_tokenizer)
        step = None
        if start is not None:
            start.load_weights(conf.model)
            if start.state is not None:
                step = int(start.checkpoint.name)
                if start.state['position']['epoch'] >= conf.epochs:
                    raise UserError(f'the checkpoint has done {start.state["position"]["epoch"]} of '
                                    f'epochs={conf.epochs}; give a larger epochs=N to train longer')
                conf.load_state_dict(start.state)
                if world.is_main and runs.status(start.run) != 'running':
                    # what a killed writer of the parent left half written
                    checkpoints.remove_partial_checkpoints(start.run)
    checkpoints.install(conf.model, conf.state_dict, resumed_step=step, keep=conf.keep_checkpoints,
                        valid_loss=conf.valid_loss_here, tokenizer=tokenizers.digest(conf.text.tokenizer))
    compute_ahead(conf)
    # The dashboard, when one is configured and answers ([dashboard](dashboard.html)).
    dashboard_api = dashboard.connect(writers if world.is_main else set())
    run_uuid, run_path = labml_glue.run_uuid(), labml_glue.run_path()
    started, ended, extras = time.time(), None, None
    try:
        with labml_glue.start(parent=start.name.split(':')[0] if step is not None else None, step=step or 0,
                              daemon_sender=dashboard_api is not None):
            # in the dashboard's runs list while it trains, its name with its uuid, its chart on its losses
            dashboard.claim_soon(dashboard_api, run_uuid)
            if world.is_main:
                # The tokenizer goes with the run, for `generate` and every run that continues it.
                tokenizers.save(conf.text.tokenizer, run_path)
                n_params = sum(p.numel() for p in conf.model.parameters())
                logger.log([('Model parameters: ', Text.key), (f'{n_params:,}', Text.value)])
                if start is not None and start.state is None:
                    source = f'run {start.name}' if isinstance(start, Start) else start.name
                    logger.log([('Initialised from: ', Text.key), (source, Text.value)])
                if 'tensorboard' in writers:
                    extras = TensorBoardExtras(run_path / 'tensorboard', labml_glue.run_configs())
                    labml_glue.add_tracker_writer(extras)
            display = console.Display(live=sys.stdout.isatty(), total=conf.schedule.total,
                                      start=conf.tokens_trained(), epochs=conf.epochs) \
                if world.is_main and 'screen' in writers else None
            conf.run(display)
    except KeyboardInterrupt as e:
        ended = e
        raise
    finally:
        seconds = time.time() - started
        if extras is not None:
            extras.close()
        page = dashboard.finish(dashboard_api, run_uuid, valid=conf.last_valid_loss())
        if world.is_main and (ended is not None or conf.finished()):
            reports.summary(run_path, tokens=tracker.get_global_step() - (step or 0), seconds=seconds,
                            dashboard_url=page)
            if ended is not None and conf.is_save_models:
                logger.log(f'Resume with: gpt-train --resume {run_uuid}', Text.highlight)
    return conf


class TensorBoardExtras(labml_glue.TrackerWriter):
    """
    <a id="TensorBoardExtras"></a>
    A labml writer for what its TensorBoard writer leaves out: the sampled text (TensorBoard's
    TEXT tab), and when the run ends, the run's configs as hyperparameters with the best and the
    last validation loss as their metrics (its HPARAMS tab, where runs can be ranked by them).
    """

    def __init__(self, log_dir: Path, configs: Dict[str, Dict[str, Any]]):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(log_dir))
        self.hparams = hyperparameters(configs)
        self.valid_losses = []

    def write(self, *, global_step: int, indicators):
        for indicator in indicators.values():
            if isinstance(indicator, labml_glue.TextIndicator) and not indicator.is_empty():
                for value in indicator.get_values().values():
                    self.writer.add_text(indicator.name, str(value), global_step)
            elif indicator.name == 'loss.valid' and not indicator.is_empty():
                self.valid_losses.append(float(indicator.get_mean()))

    def flush(self):
        self.writer.flush()

    def close(self):
        """The hyperparameters and their metrics; `run_name='.'` keeps them in the run's own folder."""
        metrics = {'best_valid_loss': min(self.valid_losses), 'last_valid_loss': self.valid_losses[-1]} \
            if self.valid_losses else {}
        self.writer.add_hparams(self.hparams, metrics, run_name='.')
        self.writer.close()


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
