"""
# Fine-tuning: a new run from another run's weights

```
python -m gpt_experiment.main configs/finetune_shakespeare.yaml init_from=RUN[:STEP] [key=value ...]
```

`init_from` is a config key like any other ([configs](configs.html)): a run's uuid or a unique
prefix of it, and optionally `:STEP`, one of its checkpoints (the newest complete one when no
step is given). It takes effect where runs start, in [`train`](training.html) (the command
line, or `train({'init_from': ...})` from Python). The run store ([runs](runs.html)) finds the
run and judges the checkpoint, so an unknown run, an ambiguous prefix or a damaged checkpoint
is one line, as for `--resume`.

What the new run takes from the source run, and what it does not:

* **the weights** of that checkpoint, loaded into the freshly built model before the run
  starts (`load_weights`);
* **the tokenizer**: the source's `tokenizer.json` encodes the new corpus. A byte-level BPE
  encodes any text; a character vocabulary refuses a character it lacks, in one line, since
  the embedding has no row for it;
* **the model's shape**: the keys that size the weights or give them their meaning
  (`SHAPE_KEYS`) are the source's. Giving one of them another value is one line and exit 2,
  before anything is written;
* **nothing else**. The optimizer's moments, the learning-rate schedule, the data order, the
  random generators and labml's step counter start fresh, as in any new run: fine-tuning is
  a run of its own with its own learning rate, warm-up and epochs
  (`configs/finetune_shakespeare.yaml`). `--resume` is the way to continue a run instead.

The new run records its source in its `configs.yaml` as `init_from: <uuid>:<step>`, the
resolved run and checkpoint, whatever prefix was typed. Only a new run loads it: resuming a
fine-tuned run, or generating from it, rebuilds the model from its own checkpoints and does not
need the source any more.
"""

from pathlib import Path
from typing import Any, Dict, NamedTuple

import torch

from . import checkpoints, runs
from .configs import Configs
from .errors import UserError
from .overrides import config_keys

# What sizes the weights or gives them their meaning. The tokenizer's keys are among them: the
# embedding's rows are the source's token ids.
SHAPE_KEYS = ('transformer.d_model', 'transformer.n_heads', 'transformer.n_layers',
              'transformer.ffn.d_ff', 'transformer.ffn.activation', 'transformer.ffn.is_gated',
              'transformer.ffn.bias1', 'transformer.ffn.bias2', 'transformer.ffn.bias_gate',
              'transformer.ffn.glu_variant',
              'transformer.encoder_layer', 'transformer.src_embed', 'tie_embeddings',
              'tokenizer', 'bpe_vocab_size', 'bpe_train_bytes')


class Source(NamedTuple):
    """The run and the checkpoint whose weights a new run starts from."""
    run: Path
    checkpoint: Path

    @property
    def name(self) -> str:
        """`<uuid>:<step>`, as the new run records it."""
        return f'{runs.uuid_of(self.run)}:{self.checkpoint.name}'


def find_source(init_from: str) -> Source:
    """`RUN[:STEP]` to the run's folder and the checkpoint to load, through the run store."""
    run, colon, step = init_from.partition(':')
    if colon and not step.isdigit():
        raise UserError(f'init_from={init_from!r}: the step after ":" must be a checkpoint step (a number)')
    try:
        run_dir = runs.find_run(run)
        return Source(run_dir, runs.find_checkpoint(run_dir, int(step) if colon else None))
    except UserError as e:
        raise UserError(f'init_from: {e}') from None


def source_values(source: Source, keys) -> Dict[str, Any]:
    """
    What the source run had for `keys`: the value labml recorded (given, or set by an option),
    or else the value the key is declared with, which the run then had.
    """
    declared = config_keys(Configs)
    recorded = runs.config_values(source.run)
    return {key: declared[key].default if recorded.get(key) is None else recorded[key] for key in keys}


def with_source_shape(source: Source, overrides: Dict[str, Any]) -> Dict[str, Any]:
    """
    The new run's overrides: the source's shape, what the user gave on top of it, and
    `init_from` resolved to `<uuid>:<step>`. A given value that contradicts the source's shape
    is refused.
    """
    had = source_values(source, SHAPE_KEYS + ('seq_len',))
    # Learned positions are a table of `seq_len` rows.
    keys = SHAPE_KEYS + (('seq_len',) if had['transformer.src_embed'] == 'learned_pos' else ())
    for key in keys:
        if key in overrides and str(overrides[key]) != str(had[key]):
            raise UserError(f'{key}={overrides[key]} contradicts run {runs.uuid_of(source.run)}, which has '
                            f'{key}={had[key]}: init_from takes the model\'s shape from the source run')
    # The source's own values; the keys it was not given have their declared values here too.
    shape = {k: v for k, v in runs.given_configs(source.run).items() if k in keys}
    return {**overrides, **shape, 'init_from': source.name}


def load_weights(model: torch.nn.Module, source: Source):
    """Load the source checkpoint's weights into the new run's freshly built `model`."""
    state = runs.load_checkpoint(source.checkpoint, 'model')
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        # A difference that the keys above do not name.
        raise UserError(f'init_from: the weights of {source.checkpoint} do not fit this model '
                        f'({checkpoints._detail(e)}); the model\'s shape comes from the source run') from None
