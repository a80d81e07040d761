"""
# Where bf16 pays on a CPU: the width at which `dtype=auto` switches

On a CPU with bf16 units (AVX512-BF16 or AMX), a bf16 matrix product runs at about twice the
fp32 rate, but autocast casts the weights and activations around every product; small models
lose more to the casts than they gain. This times the trainer's own step (`Trainer.train_step`)
in fp32 and in bf16, one after the other on the same batches, for a range of widths, and prints
for each the median over pairs of steps of fp32's step time over bf16's: above 1, bf16 is faster.

```
python benchmarks/bf16_crossover.py                       # widths 64 to 768, 2 layers, batches of 20 x 64 and 16 x 128
python benchmarks/bf16_crossover.py --widths 128 256 512 --layers 4 --steps 12
```
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt_experiment import Configs  # noqa: E402
from gpt_experiment.configs import cpu_name  # noqa: E402
from gpt_experiment.overrides import check_overrides  # noqa: E402

from throughput import build  # noqa: E402


def ratio(width: int, layers: int, batch: int, seq_len: int, steps: int, warmup: int) -> float:
    shape = {'transformer.d_model': width, 'transformer.n_heads': max(1, width // 32), 'transformer.n_layers': layers,
             'transformer.ffn.d_ff': 4 * width, 'transformer.dropout': 0.0, 'batch_size': batch, 'seq_len': seq_len}
    runs = {dtype: build(Configs, check_overrides(Configs, {**shape, 'dtype': dtype})) for dtype in ('float32', 'bfloat16')}
    batches = list(runs['float32'].train_loader.epoch(0))
    times = {dtype: [] for dtype in runs}
    for i in range(warmup + steps):
        x, y, _ = batches[i % len(batches)]
        for dtype, conf in runs.items():
            start = time.perf_counter()
            conf.train_step(x, y)
            if i >= warmup:
                times[dtype].append(time.perf_counter() - start)
    return statistics.median(f / b for f, b in zip(times['float32'], times['bfloat16']))


def main():
    parser = argparse.ArgumentParser(description='fp32 step time over bf16, by width')
    parser.add_argument('--widths', type=int, nargs='+', default=[64, 96, 128, 192, 256, 384, 512, 768])
    parser.add_argument('--layers', type=int, default=2)
    parser.add_argument('--batches', nargs='+', default=['20x64', '16x128'], help='BATCHxSEQ_LEN')
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    args = parser.parse_args()
    print(f'{cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads; {args.layers} layers')
    print('width  ' + '  '.join(f'{b:>8}' for b in args.batches) + '   (fp32 step time / bf16 step time)')
    for width in args.widths:
        cells = []
        for b in args.batches:
            batch, seq_len = map(int, b.split('x'))
            cells.append(f'{ratio(width, args.layers, batch, seq_len, args.steps, args.warmup):8.2f}')
        print(f'{width:5d}  ' + '  '.join(cells), flush=True)


if __name__ == '__main__':
    main()
