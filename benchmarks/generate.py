"""
# Generation speed, with and without the key/value cache

Tokens/s for `--new` new tokens (500) after a `--prompt` token prompt (256, cropped to the
context), on the default model shape with random weights, with the cache and without; the
ratio is printed last.

```
python benchmarks/generate.py                       # the labml recipe's shape: 6 x 512, seq_len 128
python benchmarks/generate.py seq_len=512 --new 200  # overrides as for gpt_experiment.main
```
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labml import experiment  # noqa: E402

from gpt_experiment import Configs  # noqa: E402
from gpt_experiment.overrides import check_overrides, overrides_from_args  # noqa: E402
from gpt_experiment.sampling import generate, make_sampler  # noqa: E402
from gpt_experiment.runs import project_path  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('items', nargs='*', help='key=value overrides')
    parser.add_argument('--prompt', type=int, default=256)
    parser.add_argument('--new', type=int, default=500)
    parser.add_argument('--vocab', type=int, default=65, help='vocabulary size (Tiny Shakespeare has 65 characters)')
    args = parser.parse_args()
    overrides = check_overrides(Configs, {'n_tokens': args.vocab, **overrides_from_args(args.items)})
    experiment.create(name='generate_benchmark', writers=set(), python_file=project_path())
    c = Configs()
    experiment.configs(c, overrides)
    model = c.model.eval()
    torch.manual_seed(0)
    prompt = torch.randint(0, args.vocab, (args.prompt,))[-c.seq_len:]
    greedy = make_sampler(temperature=0)
    rates = {}
    for use_cache in (False, True):
        start = time.perf_counter()
        n = sum(1 for _ in generate(model, prompt, n_tokens=args.new, seq_len=c.seq_len, sampler=greedy,
                                    use_cache=use_cache))
        rates[use_cache] = n / (time.perf_counter() - start)
        print(f'{"with" if use_cache else "without"} cache: {rates[use_cache]:.1f} tokens/s '
              f'({args.new} tokens after a {args.prompt}-token prompt, seq_len {c.seq_len}, '
              f'{torch.get_num_threads()} threads)')
    print(f'cache speed-up: {rates[True] / rates[False]:.2f}x')


if __name__ == '__main__':
    main()
