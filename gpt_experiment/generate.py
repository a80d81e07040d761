"""
# Generate

```
gpt-generate [--run RUN] [--checkpoint STEP] [--prompt TEXT | --prompt-file FILE] [--max-new-tokens N]
    [--temperature T] [--top-k K] [--top-p P] [--num-samples S] [--seed N] [--device D] [--no-cache] [--slide N]
```

Continues a prompt from a run's checkpoint and streams the text to stdout as it is produced.
The run, its checkpoint, configs and tokenizer come from the [run store](runs.html), the same
way `--resume` finds them: the run by its uuid or a unique prefix (the newest run with a
complete checkpoint by default), the newest complete checkpoint or `--checkpoint STEP`,
everything read safely and checked. The prompt is the run's own (`prompt`) unless given.
Decoding, with the key/value cache, is in [sampling](sampling.html).

Bad input (an unknown run or checkpoint, with what exists listed; a damaged or missing file of
the run, named; prompt characters outside a character vocabulary; a temperature that is
negative, not finite or too small to divide by; top-k < 1, top-p outside (0, 1]; a seed the
generator does not take; a device that does not exist) is one line on stderr and exit status 2.
A prompt longer than the context is cropped to its last `seq_len` tokens, with a warning.
"""

import contextlib
import io
import math
import sys
from typing import List, Optional

from . import commands, files
from .errors import UserError

# The smallest temperature that is not greedy: the logits divided by less overflow float32.
MIN_TEMPERATURE = 1e-3


def parser() -> commands.Parser:
    p = commands.Parser(prog='gpt-generate', description='Continue a prompt from a checkpoint.')
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
    return p


def check_sampling(temperature: float, seed: int):
    """The values a sampler and a generator take."""
    if not math.isfinite(temperature) or temperature < 0:
        raise UserError(f'--temperature must be a finite number >= 0, got {temperature}')
    if 0 < temperature < MIN_TEMPERATURE:
        raise UserError(f'--temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}, got {temperature}')
    if not 0 <= seed < 2 ** 63:
        raise UserError(f'--seed must be in [0, 2**63), got {seed}')


@commands.command
def run(argv: Optional[List[str]] = None) -> int:
    """`gpt-generate` and `python -m gpt_experiment.generate`."""
    args = parser().parse_args(commands.argv_of(argv))
    check_sampling(args.temperature, args.seed)
    # imported once the arguments are good, so that `--help` answers at once
    with commands.held_signals():
        import torch
        from labml import experiment
        from . import runs, sampling, tokenizers

    sampler = sampling.make_sampler(args.temperature, args.top_k, args.top_p)
    if args.max_new_tokens < 1 or args.num_samples < 1:
        raise UserError('--max-new-tokens and --num-samples must be at least 1')
    prompt = args.prompt
    if args.prompt_file is not None:
        prompt = files.read_text(args.prompt_file, max_bytes=16 * 1024 * 1024)

    # labml reports what it builds and loads on stdout, which is the generated text's; errors
    # are ours to report, in one line.
    with contextlib.redirect_stdout(io.StringIO()):
        experiment.create(name='generate', python_file=runs.project_path(), writers=set())
        run_dir, checkpoint = runs.find(args.run, args.checkpoint)
        model, conf, tokenizer = runs.load_model(run_dir, checkpoint, args.device)
    device = next(model.parameters()).device
    if args.run is None:
        print(f'run {run_dir.parent.name}/{run_dir.name}, checkpoint {checkpoint.name}', file=sys.stderr)
    # the run's own prompt, by default
    prompt = conf.prompt if prompt is None else prompt
    sampling.check_prompt(prompt, tokenizer)
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
    sys.exit(run())
