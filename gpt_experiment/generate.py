"""
# Generate

```
gpt-generate [--run UUID] [--checkpoint STEP] [--prompt TEXT | --prompt-file FILE] [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--num-samples S] [--seed N]
    [--device D] [--no-cache] [--slide N]
```

Continues a prompt from a run's checkpoint and streams the text to stdout as it is produced.
The run, its checkpoint, configs and tokenizer come from the [run store](runs.html), the same
way `--resume` finds them: the run by its uuid or a unique prefix (the newest run with a
complete checkpoint by default), the newest complete checkpoint or `--checkpoint STEP`,
everything read safely (tensors with `weights_only=True`, YAML without Python tags). The
prompt is the run's own (`prompt`) unless given. The configs the run was given are applied to
a fresh `Configs`, which rebuilds the same model (the vocabulary size comes from the tokenizer
saved in the run's folder, so the corpus is not needed). Decoding, with the key/value cache,
is in [sampling](sampling.html).

Bad input (an unknown run or checkpoint, with what exists listed; a damaged or missing file of
the run, named; prompt characters outside a character vocabulary; temperature < 0, top-k < 1,
top-p outside (0, 1]; a device that does not exist, or CUDA with a torch built without it) is
one line on stderr and exit status 2. A prompt longer than the context is cropped to its last
`seq_len` tokens, with a warning on stderr.
"""

import argparse
import contextlib
import io
import sys
from pathlib import Path
from typing import List, Optional

import torch

from labml import experiment

from . import commands, corpus, runs, sampling, tokenizers
from .errors import UserError


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = commands.Parser(prog='python -m gpt_experiment.generate',
                        description='Continue a prompt from a checkpoint.')
    p.add_argument('--run', help='run uuid, or a unique prefix of one (default: the newest run with a checkpoint)')
    p.add_argument('--checkpoint', type=int, default=None, help='global step of the checkpoint (default: newest)')
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument('--prompt', help="text to continue (default: the run's own prompt)")
    prompt.add_argument('--prompt-file', help='UTF-8 file with the text to continue')
    p.add_argument('--max-new-tokens', type=int, default=200)
    p.add_argument('--temperature', type=float, default=1.0, help='0 is greedy')
    p.add_argument('--top-k', type=int, default=None)
    p.add_argument('--top-p', type=float, default=None)
    p.add_argument('--num-samples', type=int, default=1)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device', default='cpu')
    p.add_argument('--no-cache', action='store_true', help='re-run the whole context for every token')
    p.add_argument('--slide', type=int, default=None,
                   help='tokens the cached window slides by when full (default seq_len // 4; 1 is exact)')
    return p.parse_args(argv)


def check_device(name: str) -> torch.device:
    """`--device`, checked by putting a tensor there: a device that does not exist, or CUDA with a
    torch built without it, is a `UserError` of one line."""
    try:
        device = torch.device(name)
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError, NotImplementedError) as e:
        raise UserError(f'--device {name}: {str(e).strip().splitlines()[0]}') from None
    if device.type == 'meta':
        raise UserError('--device meta: meta tensors hold no values to generate from')
    return device


def load_model(run_dir: Path, checkpoint: Path, tokenizer, device: torch.device):
    """Rebuild the run's model from the configs it was given, and load the checkpoint's weights."""
    from .configs import Configs
    overrides = runs.given_configs(run_dir)
    # The model's vocabulary comes from the saved tokenizer; nothing computes the corpus.
    overrides['n_tokens'] = tokenizer.n_tokens
    conf = Configs()
    experiment.configs(conf, overrides)
    model = conf.model
    state = runs.load_checkpoint(checkpoint, 'model')
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f'{checkpoint / "model.pth"} does not fit the model of {run_dir / "configs.yaml"} '
                        f'({e.__class__.__name__})') from None
    return model.to(device).eval(), conf


@commands.command
def run(argv: Optional[List[str]] = None) -> int:
    """The command line (`gpt-generate`; `argv` defaults to `sys.argv[1:]`)."""
    args = parse_args(argv)
    sampler = sampling.make_sampler(args.temperature, args.top_k, args.top_p)
    if args.max_new_tokens < 1 or args.num_samples < 1:
        raise UserError('--max-new-tokens and --num-samples must be at least 1')
    device = check_device(args.device)
    prompt = args.prompt
    if args.prompt_file is not None:
        try:
            prompt = corpus.regular_file(args.prompt_file).read_text(encoding='utf-8')
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f'cannot read prompt file {args.prompt_file}: {e}') from None

    # labml reports what it builds and loads on stdout, which is the generated text's; errors
    # are ours to report, in one line.
    with contextlib.redirect_stdout(io.StringIO()):
        experiment.create(name='generate', python_file=runs.project_path(), writers=set())
        run_dir = runs.find_run(args.run) if args.run is not None else runs.newest_run_with_checkpoint()
        checkpoint = runs.find_checkpoint(run_dir, args.checkpoint)
        tokenizer = tokenizers.load(run_dir)
        model, conf = load_model(run_dir, checkpoint, tokenizer, device)
    if args.run is None:
        print(f'run {run_dir.parent.name}/{run_dir.name}, checkpoint {checkpoint.name}', file=sys.stderr)
    # the run's own prompt, by default
    prompt = conf.prompt if prompt is None else prompt
    if not prompt:
        raise UserError('prompt is empty: generation needs at least one token to start from')
    missing = tokenizer.unknown(prompt)
    if missing:
        raise UserError('prompt has characters that are not in the vocabulary: ' + ' '.join(map(repr, missing)))
    ids = tokenizer.encode(prompt)
    if len(ids) > conf.seq_len:
        print(f'warning: the prompt has {len(ids)} tokens; keeping the last {conf.seq_len} (the context)',
              file=sys.stderr)
        ids = ids[-conf.seq_len:]
    if args.slide is not None and not 1 <= args.slide < conf.seq_len:
        raise UserError(f'--slide must be in [1, {conf.seq_len - 1}], got {args.slide}')
    prompt_ids = torch.tensor(ids, dtype=torch.long, device=device)

    torch.manual_seed(args.seed)
    try:
        for i in range(args.num_samples):
            if args.num_samples > 1:
                print(f'--- sample {i + 1} ---', flush=True)
            decoder = tokenizers.StreamDecoder(tokenizer)
            sys.stdout.write(prompt)
            for token in sampling.generate(model, prompt_ids, n_tokens=args.max_new_tokens, seq_len=conf.seq_len,
                                           sampler=sampler, use_cache=not args.no_cache, slide=args.slide):
                sys.stdout.write(decoder.add(token))
                sys.stdout.flush()
            sys.stdout.write(decoder.flush() + '\n')
            sys.stdout.flush()
    except KeyboardInterrupt:
        # a sample stopped mid-line; `interrupted` goes on a line of its own
        print(file=sys.stderr)
        raise
    return 0


if __name__ == '__main__':
    sys.exit(run(sys.argv[1:]))
