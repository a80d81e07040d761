"""
# Training throughput

Times whole training steps (forward, backward, gradient clipping, optimizer) of the trainer's
own model and optimizer, for several variants side by side in one process, on the same batches:

```
python benchmarks/throughput.py                      # the default recipe: stock mha vs sdpa attention
python benchmarks/throughput.py seq_len=64 batch_size=12 transformer.d_model=128 \\
    transformer.n_heads=4 transformer.n_layers=4 transformer.ffn.d_ff=512 --steps 30
```

Overrides are the same `key=value`s as `python -m gpt_experiment.main`. Each variant prints the
median step time and tokens/s; the last line is the ratio of the last variant to the first.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labml import experiment  # noqa: E402

from gpt_experiment import Configs  # noqa: E402
from gpt_experiment.cli import check_overrides, overrides_from_args  # noqa: E402
from gpt_experiment.train import project_path  # noqa: E402


def time_steps(overrides, steps: int, warmup: int):
    experiment.create(name='throughput', writers=set(), python_file=project_path())
    c = Configs()
    experiment.configs(c, check_overrides(Configs, overrides))
    model, optimizer = c.model, c.optimizer
    model.train()
    batches = iter(c.train_loader)
    times = []
    for i in range(warmup + steps):
        x, y = next(batches)
        start = time.perf_counter()
        with torch.autocast(c.device.type, dtype=c.dtype, enabled=c.dtype != torch.float32):
            output, _ = model(x)
            loss = c.loss_func(output, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_norm_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if c.device.type == 'cuda':
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times), x.numel()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('overrides', nargs='*', help='key=value overrides shared by all variants')
    parser.add_argument('--variants', default='transformer.encoder_attn=mha;transformer.encoder_attn=sdpa',
                        help='";"-separated variants, each a ","-separated list of key=value')
    parser.add_argument('--steps', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=2)
    args = parser.parse_args()
    base = overrides_from_args(args.overrides)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads')
    results = []
    for variant in args.variants.split(';'):
        overrides = {**base, **overrides_from_args([v for v in variant.split(',') if v])}
        seconds, tokens = time_steps(overrides, args.steps, args.warmup)
        results.append(seconds)
        print(f'{variant or "defaults"}: {seconds * 1000:,.1f} ms/step, {tokens / seconds:,.0f} tokens/s')
    print(f'speedup: {results[0] / results[-1]:.2f}')


if __name__ == '__main__':
    main()
