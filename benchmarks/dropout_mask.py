"""
# Drawing a dropout mask on a CPU

Times three ways of drawing the keep mask of dropout over one tensor, in turn, on the same
machine:

* **bernoulli**: PyTorch's own, `torch.empty(shape).bernoulli_(1 - p)` (what `nn.Dropout`
  draws on a CPU);
* **int31**: one 31-bit integer per element from PyTorch's generator, compared with
  $p \\, 2^{31}$ (this project's mask until c41ad5a);
* **bytes**: [`keep_mask`](../gpt_experiment/model.py), about one random byte per element.

It prints each one's median time and the ratios `bernoulli/bytes` and `int31/bytes` (above 1
the byte mask is faster).

```
python benchmarks/dropout_mask.py                      # the default shape's feed-forward hidden layer
python benchmarks/dropout_mask.py --shape 16 8 128 128 # its attention weights
```
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt_experiment.configs import cpu_name  # noqa: E402
from gpt_experiment.model import keep_mask  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description='Dropout masks on a CPU: PyTorch\'s against this project\'s.')
    parser.add_argument('--shape', type=int, nargs='+', default=[16, 128, 2048])
    parser.add_argument('--p', type=float, default=0.1)
    parser.add_argument('--repeats', type=int, default=30)
    args = parser.parse_args()
    shape, p = tuple(args.shape), args.p
    ways = {
        'bernoulli': lambda: torch.empty(shape).bernoulli_(1 - p),
        'int31': lambda: torch.empty(shape, dtype=torch.int32).random_() >= round(p * 2 ** 31),
        'bytes': lambda: keep_mask(shape, p),
    }
    times = {name: [] for name in ways}
    for i in range(args.repeats + 3):
        # in turn, so that all three see the same machine load
        for name, draw in ways.items():
            start = time.perf_counter()
            draw()
            if i >= 3:
                times[name].append(time.perf_counter() - start)
    print(f'{cpu_name()}; shape {list(shape)}, p {p}, torch {torch.__version__}, {torch.get_num_threads()} threads')
    for name, ts in times.items():
        print(f'{name:>9}: {statistics.median(ts) * 1000:8.2f} ms')
    for other in ('bernoulli', 'int31'):
        ratios = [o / b for o, b in zip(times[other], times['bytes'])]
        print(f'{other}/bytes: {statistics.median(ratios):.1f}')


if __name__ == '__main__':
    main()
