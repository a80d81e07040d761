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

from gpt_experiment import Configs  # noqa: E402
from gpt_experiment.configs import cpu_name  # noqa: E402
from gpt_experiment.overrides import check_overrides, overrides_from_args  # noqa: E402
from gpt_experiment.sampling import generate, make_sampler  # noqa: E402

from throughput import build  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('items', nargs='*', help='key=value overrides')
    parser.add_argument('--prompt', type=int, default=256)
    parser.add_argument('--new', type=int, default=500)
    args = parser.parse_args()
    # the vocabulary is the corpus's (Tiny Shakespeare's 65 characters by default)
    overrides = check_overrides(Configs, overrides_from_args(args.items))
    c = build(Configs, overrides)
    model = c.model.eval()
    torch.manual_seed(0)
    prompt = torch.randint(0, c.n_tokens, (args.prompt,))[-c.seq_len:]
    greedy = make_sampler(temperature=0)
    rates = {}
    for use_cache in (False, True):
        start = time.perf_counter()
        n = sum(1 for _ in generate(model, prompt, n_tokens=args.new, seq_len=c.seq_len, sampler=greedy,
                                    use_cache=use_cache))
        rates[use_cache] = n / (time.perf_counter() - start)
        print(f'{"with" if use_cache else "without"} cache: {rates[use_cache]:.1f} tokens/s '
              f'({args.new} tokens after a {args.prompt}-token prompt, seq_len {c.seq_len}, '
              f'{torch.get_num_threads()} threads of the {cpu_name()})')
    print(f'cache speed-up: {rates[True] / rates[False]:.2f}x')


if __name__ == '__main__':
    main()
