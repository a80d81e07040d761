"""
# Export to Hugging Face

```
gpt-export RUN[:STEP] -o DIR
```

writes a run's checkpoint (the newest complete one, or `STEP`) as a Hugging Face model folder
that `transformers` loads offline:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
model = AutoModelForCausalLM.from_pretrained(DIR)
tokenizer = AutoTokenizer.from_pretrained(DIR)
pipeline('text-generation', model=DIR)('It is ')
```

The folder holds `config.json` and `model.safetensors` (GPT-2, or OpenAI GPT for GPT-1's
post-LN shape: the mapping is in [hf](hf.html)), the tokenizer as `tokenizer.json` with its
`tokenizer_config.json`, and `generation_config.json` with `gpt-generate`'s defaults
(temperature 1, the whole distribution, at most the context).

Before anything is written, the export is checked: on a window of `seq_len` token ids, the
HF model's logits equal the run's within `1e-4`, and the HF tokenizer encodes the run's prompt
to the run's ids. The folder appears whole or not at all; one that exists and is not empty is
refused. A run whose model neither HF model computes (see [hf](hf.html)), an unknown run or
checkpoint, or a missing `transformers` (the `[hf]` extra) is one line and exit status 2.
"""

import contextlib
import io
import os
import shutil
import sys
from pathlib import Path
from typing import List, Optional

from . import commands
from .errors import UserError

# How far the exported model's logits may be from the run's (float32)
TOLERANCE = 1e-4


def parser() -> commands.Parser:
    p = commands.Parser(prog='gpt-export', description='Write a checkpoint as a Hugging Face transformers folder.')
    p.add_argument('run', metavar='RUN[:STEP]',
                   help='run uuid or a unique prefix, and the checkpoint step (default: the newest complete one)')
    p.add_argument('-o', '--output', required=True, metavar='DIR', help='the folder to write (new, or empty)')
    return p


def _check(model, hf_model, tokenizer, hf_tokenizer, prompt: str, seq_len: int):
    """The HF model and tokenizer compute what the run's do, or the export stops here."""
    import torch
    ids = torch.randint(model.generator.projection.out_features, (seq_len,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(ids.unsqueeze(-1))[0][:, 0]
        theirs = hf_model(ids.unsqueeze(0)).logits[0]
    gap = (ours - theirs).abs().max().item()
    if not gap <= TOLERANCE:
        raise UserError(f'the exported model gives other logits than the run (by {gap:.1e}); nothing was written')
    if hf_tokenizer.encode(prompt).ids != tokenizer.encode(prompt):
        raise UserError(f'the exported tokenizer encodes the prompt {prompt!r} differently; nothing was written')


@commands.command
def run(argv: Optional[List[str]] = None) -> int:
    """`gpt-export` and `python -m gpt_experiment.export`."""
    args = parser().parse_args(commands.argv_of(argv))
    out = Path(args.output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f'{out} exists and is not an empty folder; give a new one')
    # imported once the arguments are good, so that `--help` answers at once
    with commands.held_signals():
        from labml import experiment
        from . import files, hf, runs

    transformers = hf.import_transformers()
    # labml reports what it builds and loads on stdout; errors are ours to report, in one line.
    with contextlib.redirect_stdout(io.StringIO()):
        experiment.create(name='export', python_file=runs.project_path(), writers=set())
        run_dir, checkpoint = runs.find_ref(args.run)
        model, conf, tokenizer = runs.load_model(run_dir, checkpoint, 'cpu')
    exported = hf.export(model, seq_len=conf.seq_len, dropout=conf.transformer.dropout,
                         embedding_dropout=conf.embedding_dropout)
    hf_model = hf.to_transformers(exported)
    _check(model, hf_model, tokenizer, hf.hf_tokenizer(tokenizer), conf.prompt, conf.seq_len)

    # Into a folder of its own beside `out`, renamed into place when complete
    tmp = files.temporary(out.absolute())
    # (transformers shows a progress bar for each file it writes)
    transformers.utils.logging.disable_progress_bar()
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        hf_model.save_pretrained(str(tmp))
        hf.save_tokenizer(tokenizer, tmp, conf.seq_len)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except (OSError, RuntimeError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise files.cannot_write(out, e) from None
    files.fsync_dir(out.absolute().parent)
    shape = ', '.join(f'{k}={exported.config[k]}' for k in ('n_layer', 'n_embd', 'vocab_size', 'n_positions'))
    print(f'{out}: {hf.CLASSES[exported.architecture]} ({shape}) from run {runs.uuid_of(run_dir)}, '
          f'checkpoint {checkpoint.name}')
    return 0


if __name__ == '__main__':
    sys.exit(run())
