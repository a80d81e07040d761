"""
# What a parameter tensor costs a CPU step

At the small shape a CPU step is short enough (about 35 to 50 ms on 2 cores) that costs paid
once per parameter tensor, or once per module, show. This times, in turn in one process, on
the model `Configs` builds at the shape:

* **adam**: one step of the run's own optimizer (PyTorch's fused Adam, labml_nn's rule) over
  the model's parameter tensors, against the same optimizer over one flat tensor per decay
  group holding the same numbers: `adam per-tensor/flat` is what the tensors' count costs;
* **train()**: `model.train()`, a walk over every module, against a whole training step:
  `train()/step` is its share (the trainer skips it when the model is training already).

```
python benchmarks/per_tensor.py                  # the small shape
python benchmarks/per_tensor.py --shape default
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
from gpt_experiment.optimizer import AdamWarmupCosineDecay  # noqa: E402
from gpt_experiment.overrides import check_overrides  # noqa: E402

from throughput import SHAPES, batches_of, build, shape_overrides  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description='Per-tensor and per-module costs of a CPU training step.')
    parser.add_argument('--shape', choices=SHAPES, default='small')
    parser.add_argument('--repeats', type=int, default=200)
    args = parser.parse_args()
    conf = build(Configs, check_overrides(Configs, {**shape_overrides(SHAPES[args.shape]), 'dtype': 'float32'}))
    groups = conf.optimizer.param_groups
    settings = dict(lr=groups[0]['peak_lr'], betas=groups[0]['betas'], eps=groups[0]['base_eps'])
    # the same numbers twice: as the model's tensors, and as one flat tensor per group
    tensors = [[p.detach().clone().requires_grad_() for p in g['params']] for g in groups]
    flat = [torch.cat([p.detach().reshape(-1) for p in ps]).requires_grad_() for ps in tensors]
    for p in [p for ps in tensors for p in ps] + flat:
        p.grad = torch.randn_like(p)
    optimizers = {name: AdamWarmupCosineDecay([{'params': ps, 'weight_decay': g['decay']}
                                               for ps, g in zip(params, groups)], **settings)
                  for name, params in (('per-tensor', tensors), ('flat', [[f] for f in flat]))}
    for o in optimizers.values():
        o.set_lr(settings['lr'])
    adam = {name: [] for name in optimizers}
    walk, step = [], []
    batches = batches_of(conf.train_loader)
    for i in range(args.repeats + 5):
        # in turn, so that all see the same machine load
        a = {name: timed(o.step) for name, o in optimizers.items()}
        x, y = next(batches)
        s = timed(lambda: conf.train_step(x, y))
        w = timed(conf.model.train)
        if i >= 5:
            for name, t in a.items():
                adam[name].append(t)
            step.append(s)
            walk.append(w)
    print(f'{cpu_name()}; shape {args.shape}, torch {torch.__version__}, {torch.get_num_threads()} threads; '
          f'{sum(len(ps) for ps in tensors)} parameter tensors in {len(groups)} groups, '
          f'{sum(f.numel() for f in flat):,} numbers, {len(list(conf.model.modules()))} modules')
    for name, ts in adam.items():
        print(f'adam {name:>10}: {statistics.median(ts) * 1e3:7.3f} ms')
    print(f'step: {statistics.median(step) * 1e3:.1f} ms; train(): {statistics.median(walk) * 1e3:.3f} ms')
    ratios = [t / f for t, f in zip(adam['per-tensor'], adam['flat'])]
    print(f'adam per-tensor/flat: {statistics.median(ratios):.2f}')
    print(f'train()/step: {statistics.median([w / s for w, s in zip(walk, step)]):.2%}')


if __name__ == '__main__':
    main()
