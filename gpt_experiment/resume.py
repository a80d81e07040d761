"""
# Resuming a run

```
python -m gpt_experiment.main --resume RUN_UUID [--checkpoint STEP] [key=value ...]
```

A checkpoint holds everything that the next step depends on, each as a labml `ModelSaver`
of the [atomic checkpoints](checkpoints.html):

* `model.pth`: the model's weights;
* `training.pth`: the optimizer's state (Adam's moments, and its per-parameter `step`, which
  is also the position in the warm-up and cosine schedule), the gradient scaler, the random
  generators (torch, CUDA, Python's `random`, numpy), the generators of the training and
  validation data order, and the number of epochs done.

labml's global step (tokens trained on) is the checkpoint's folder name; labml's
`experiment.load(run, step)` restores it when the experiment starts.

**A resumed run is a new labml run that names its parent**: it gets its own uuid and folder
beside the parent's, labml records the parent in its `run.yaml` (`load_run`), and its global
step, checkpoints and tracked values continue from the checkpoint's step. The parent is never
written to, and its checkpoint is not copied into the new folder. The run is found by the
[run store](runs.html), by its uuid or a unique prefix, as `generate` finds it.

**What it is told wins.** The configuration is the parent's (its explicitly given values, from
labml's `configs.yaml`), with any `key=value` given to `--resume` applied on top. The optimizer
state brings back only Adam's moments and step counts: the learning rate, the warm-up and the
schedule's length are this run's configs, so the schedule is a function of the step and of
them (`epochs=64` trains longer on the cosine of a 64-epoch run). What cannot change is
refused in one line: the tokenizer (the corpus is encoded with the run's `tokenizer.json`, and
a character it does not know is an error, never a silent remapping) and the model's shape
(the weights would not fit).

**Exact at epoch boundaries.** labml saves at the end of every epoch and at the end of
training; from those checkpoints a resumed run repeats, bit for bit on CPU, what the run would
have done had it not stopped. A checkpoint taken mid-epoch (Ctrl-C) restores the same state,
but the interrupted epoch starts over with the next shuffle of the data rather than from the
window it had reached: counting the position in an epoch would mean saving and replaying the
state of labml's trainer, validator and batch index, which are private to labml.
"""

import random
from typing import Any, Dict

import numpy as np
import torch


def _rng_state() -> Dict[str, Any]:
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state()
    return {
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        'python': [version, list(mt), gauss],
        'numpy': [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def _set_rng_state(state: Dict[str, Any]):
    torch.set_rng_state(state['torch'])
    if state['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
    version, mt, gauss = state['python']
    random.setstate((version, tuple(mt), gauss))
    name, keys, *rest = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


def training_state(c) -> Dict[str, Any]:
    """What a `Configs` needs, besides the model, to take the next step as if never stopped."""
    return {
        'optimizer': c.optimizer.state_dict(),
        'grad_scaler': c.grad_scaler.state_dict(),
        'rng': _rng_state(),
        'train_data': c.train_loader.generator.get_state(),
        'valid_data': c.valid_loader.generator.get_state(),
        'epochs_done': c._epochs_done,
    }


def load_training_state(c, state: Dict[str, Any]):
    # The optimizer's state dict carries its hyper-parameters too (learning rate, warm-up and
    # length of the schedule, weight decay, betas); they are this run's configs, not the
    # parent's: only the moments and step counts come from the checkpoint.
    given = [{k: v for k, v in group.items() if k != 'params'} for group in c.optimizer.param_groups]
    c.optimizer.load_state_dict(state['optimizer'])
    for group, values in zip(c.optimizer.param_groups, given):
        group.update(values)
    c.grad_scaler.load_state_dict(state['grad_scaler'])
    c.train_loader.generator.set_state(state['train_data'])
    c.valid_loader.generator.set_state(state['valid_data'])
    c._epochs_done = int(state['epochs_done'])
    _set_rng_state(state['rng'])
