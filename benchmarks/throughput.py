"""
# Training throughput: labml_nn's stock GPT against this project's fast path

In one process, on the same shape, batch and data, this times whole training steps (forward,
loss, backward, gradient clipping, optimizer step) of

* **stock**: labml_nn's own GPT recipe (`labml_nn.transformers.gpt`: its `GPT` class,
  `MultiHeadAttention`, `AdamWarmupCosineDecay`, `torch.nn.utils.clip_grad_norm_`), in
  fp32, and
* **fast**: `gpt_experiment.Configs` as the trainer runs it (`Trainer.train_step`): `sdpa`
  attention with the encoder batch first, PyTorch's fused Adam with the schedule, and the
  requested `--dtype` / `--compile`,
* **nanogpt**: a stand-in written from nanoGPT's `model.py` and `train.py` ([nanogpt](nanogpt.py)),

alternating one stock step and one fast step so that both see the same machine load. For
each it prints the median step time, tokens/s and the model FLOPs utilisation (MFU) against a
matrix-product peak measured on the spot in the same dtype. The last line is
`speedup: X.XX`, stock step time over fast step time.

```
python benchmarks/throughput.py --shape small                    # 4 layers, 128 wide, context 64, batch 12
python benchmarks/throughput.py --shape default --batch 16       # 6 layers, 512 wide, context 128
python benchmarks/throughput.py --shape default --batch 16 --dtype bfloat16
python benchmarks/throughput.py --shape small --end-to-end       # the trainer against the pure step rate
python benchmarks/throughput.py --shape small --strip-biases     # what labml_nn's linear biases cost
python benchmarks/throughput.py --shape gpt1 --device cuda --dtype bfloat16 --profile   # and where the time goes
```

`--profile` ends with `torch.profiler`'s table of the fast step's operations, by device time
(by CPU time on the CPU). `--stock-dtype` runs the stock recipe under autocast too.

`--end-to-end` runs the real trainer (`Configs.run()` with labml tracking on, sqlite writer)
for one epoch of a slice of Tiny Shakespeare, in ten training stretches. After each stretch it
times bare steps of a twin of the same configs, so the two rates are taken under the same
machine load; the last line is `trainer/steps: X.XX`, the median over the stretches of the
trainer's tokens/s over the bare steps'.
"""

import argparse
import functools
import itertools
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labml import experiment, tracker  # noqa: E402

from gpt_experiment import Configs, corpus  # noqa: E402
from gpt_experiment.configs import cpu_name  # noqa: E402
from gpt_experiment.overrides import check_overrides, overrides_from_args  # noqa: E402
from gpt_experiment.runs import project_path  # noqa: E402
from gpt_experiment.training import compute_ahead  # noqa: E402

import nanogpt  # noqa: E402

SHAPES = {
    'small': dict(n_layers=4, d_model=128, n_heads=4, d_ff=512, seq_len=64, batch=12, dropout=0.0),
    'default': dict(n_layers=6, d_model=512, n_heads=8, d_ff=2048, seq_len=128, batch=16, dropout=0.1),
    'gpt1': dict(n_layers=12, d_model=768, n_heads=12, d_ff=3072, seq_len=512, batch=8, dropout=0.1),
}


def shape_overrides(s: dict) -> dict:
    return {'seq_len': s['seq_len'], 'batch_size': s['batch'], 'transformer.n_layers': s['n_layers'],
            'transformer.d_model': s['d_model'], 'transformer.n_heads': s['n_heads'],
            'transformer.ffn.d_ff': s['d_ff'], 'transformer.dropout': s['dropout']}


def build(configs_class, overrides: dict):
    """Computed configs of an experiment that is never started (nothing is written)."""
    experiment.create(name='throughput', writers=set(), python_file=project_path())
    conf = configs_class()
    experiment.configs(conf, overrides)
    return conf


def matmul_peak(dtype: torch.dtype, device: torch.device) -> float:
    """FLOP/s of the best of a few large square matrix products: the peak MFU is measured against."""
    n = 2048 if device.type == 'cpu' else 8192
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    best = float('inf')
    for _ in range(5):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def flops_per_token(model: torch.nn.Module, n_layers: int, d_model: int, seq_len: int) -> float:
    """
    Training FLOPs per token: $6N$ for the weights that multiply activations (every parameter
    but the embeddings) plus $12 L d T$ for the attention scores and their weighted sum,
    forward and backward (PaLM's accounting).
    """
    n = sum(p.numel() for name, p in model.named_parameters() if 'src_embed' not in name)
    return 6 * n + 12 * n_layers * d_model * seq_len


def _sync(device: torch.device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def stock_step(model, optimizer, loss_func, x, y, *, dtype, clip):
    """labml_nn's `NLPAutoRegressionConfigs.step`, less its tracking."""
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
        output, *_ = model(x)
        loss = loss_func(output, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def batches_of(loader):
    """Batches of epoch after epoch."""
    for epoch in itertools.count():
        for x, y, _ in loader.epoch(epoch):
            yield x, y


def compare(args, overrides: dict):
    import labml_nn.transformers.gpt as stock_gpt
    warnings.filterwarnings('ignore', message='Overriding option')
    # Stock first: labml 0.4.168 copies a subclass's defaults into its base classes' config
    # items when the subclass is instantiated, so labml_nn's configs must be computed before
    # ours exist.
    stock = build(stock_gpt.Configs, {'text': 'tiny_shakespeare', 'tokenizer': 'character',
                                     'prompt_separator': '', 'prompt': 'It is ', **overrides})
    # labml_nn's recipe reads Tiny Shakespeare from the `data/` of the project the experiment
    # was created in (and downloads it when it is not there): give it the copy that ships with
    # this package. (Before `experiment.create`, labml's `data/` is the one above this script.)
    from labml import lab
    data = Path(lab.get_data_path()) / 'tiny_shakespeare.txt'
    if not data.exists():
        data.parent.mkdir(parents=True, exist_ok=True)
        data.write_bytes(corpus.tiny_shakespeare().parts[0].open().read())
    stock_model, stock_optimizer = stock.model, stock.optimizer
    fast = build(Configs, check_overrides(Configs, {
        **overrides, 'transformer.encoder_attn': 'sdpa', 'dtype': args.dtype, 'compile': args.compile}))
    if args.strip_biases:
        # Before the optimizer is made, so that it never sees them
        for module in fast.model.modules():
            if isinstance(module, torch.nn.Linear):
                module.bias = None
    device = fast.device
    models = {'stock': stock_model.to(device), 'fast': fast.train_model}
    dtypes = {'stock': getattr(torch, args.stock_dtype), 'fast': fast.dtype}
    steps = {'stock': functools.partial(stock_step, models['stock'], stock_optimizer, fast.loss_func,
                                        dtype=dtypes['stock'], clip=fast.grad_norm_clip),
             'fast': fast.train_step}
    optimizers = {}
    # The nanoGPT-style reference: its own model, optimizer and loop, in fp32 as nanoGPT on a CPU,
    # on the same batches laid out batch first (as nanoGPT's `get_batch` makes them)
    t = fast.transformer
    models['nanogpt'] = nanogpt.GPT(n_vocab=fast.n_tokens, seq_len=fast.seq_len, n_layers=t.n_layers,
                                    d_model=t.d_model, n_heads=t.n_heads, dropout=t.dropout,
                                    bias=args.nanogpt_bias).to(device)
    optimizers['nanogpt'] = nanogpt.configure_optimizer(models['nanogpt'])
    dtypes['nanogpt'] = torch.float32
    steps['nanogpt'] = lambda x, y: nanogpt.train_step(models['nanogpt'], optimizers['nanogpt'],
                                                       x.t().contiguous(), y.t().contiguous(), lr=1e-3)
    times = {name: [] for name in steps}
    batches = batches_of(fast.train_loader)
    for i in range(args.warmup + args.steps):
        x, y = next(batches)
        # in turn, so that all three see the same machine load
        for name in times:
            _sync(device)
            start = time.perf_counter()
            steps[name](x, y)
            _sync(device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)

    shape = SHAPES[args.shape]
    per_token = flops_per_token(fast.model, fast.transformer.n_layers, fast.transformer.d_model, fast.seq_len)
    tokens = x.numel()
    where = cpu_name() if device.type == 'cpu' else torch.cuda.get_device_name(device)
    print(f'device: {device}, {where}, torch {torch.__version__}, {torch.get_num_threads()} threads; '
          f'shape {args.shape} {shape_overrides(shape) | overrides}; {per_token / 1e6:.1f} MFLOP/token')
    for name in times:
        peak = matmul_peak(dtypes[name], device)
        seconds = statistics.median(times[name])
        mfu = per_token * tokens / seconds / peak
        print(f'{name:>5} ({str(dtypes[name]).replace("torch.", "")}): {seconds * 1000:9.1f} ms/step '
              f'{tokens / seconds:12,.0f} tokens/s   MFU {mfu:6.1%} of {peak / 1e9:,.0f} GFLOP/s')
    # per pair of steps taken back to back, then the median: robust to load that comes and goes
    for other in ('stock', 'nanogpt'):
        ratios = [o / f for o, f in zip(times[other], times['fast'])]
        print(f'fast vs {other}: {statistics.median(ratios):.2f}x per step '
              f'(pairwise median; quartiles {_quartiles(ratios)})')
    print(f'speedup: {statistics.median(times["stock"]) / statistics.median(times["fast"]):.2f}')
    if args.profile:
        for name in args.profile:
            print(f'## {name}')
            profile(lambda: steps[name](x, y), device)


def _quartiles(values) -> str:
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f'{q1:.2f}-{q3:.2f}'


def profile(step, device: torch.device, steps: int = 5):
    """`torch.profiler`'s table of `steps` steps, operations by their total device (or CPU) time."""
    from torch.profiler import ProfilerActivity, profile as profiler
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    with profiler(activities=activities) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    sort_by = 'self_cuda_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    print(prof.key_averages().table(sort_by=sort_by, row_limit=30, max_name_column_width=60))


class TimedConfigs(Configs):
    """
    The trainer, timed over its training stretches. After each stretch, `_pure_rate` times a
    few bare steps of a twin model, so that each trainer rate has a step rate measured under
    the same machine load beside it.
    """
    _pure_rate = None
    # `(trainer tokens/s, pure tokens/s)` per training stretch
    _stretches = []

    def train(self, until: int):
        tokens, start = self._position.tokens, time.perf_counter()
        super().train(until)
        rate = (self._position.tokens - tokens) / (time.perf_counter() - start)
        TimedConfigs._stretches.append((rate, TimedConfigs._pure_rate()))


def end_to_end(args, overrides: dict):
    # One epoch over the first 200k characters of Tiny Shakespeare.
    source, = corpus.tiny_shakespeare().parts
    text = Path('/tmp/gpt_experiment_e2e.txt')
    text.write_bytes(source.open().read()[:200_000])
    overrides = {**overrides, 'text': str(text), 'epochs': 1, 'inner_iterations': 10, 'dtype': args.dtype,
                 'compile': args.compile, 'is_save_models': False}

    # The twin: the same configs, its own model and optimizer, cycling over the same batches.
    twin = build(Configs, check_overrides(Configs, overrides))
    batches = batches_of(twin.train_loader)

    def pure_rate(steps=args.steps // 4):
        times = []
        for _ in range(steps):
            x, y = next(batches)
            start = time.perf_counter()
            twin.train_step(x, y)
            _sync(twin.device)
            times.append(time.perf_counter() - start)
        return x.numel() / statistics.median(times)

    for _ in range(args.warmup):
        pure_rate(1)
    TimedConfigs._pure_rate = pure_rate
    # The trainer itself, tracking to sqlite.
    experiment.create(name='throughput_e2e', writers={'sqlite'}, python_file=project_path())
    timed = TimedConfigs()
    experiment.configs(timed, check_overrides(Configs, overrides))
    compute_ahead(timed)
    with experiment.start():
        timed.run()
    trainer, pure = zip(*TimedConfigs._stretches)
    print(f'pure steps: {statistics.median(pure):,.0f} tokens/s (median over {len(pure)} samples)')
    print(f'trainer:    {statistics.median(trainer):,.0f} tokens/s (median over {len(trainer)} training stretches, '
          f'{tracker.get_global_step():,} tokens)')
    ratios = [t / p for t, p in TimedConfigs._stretches]
    print('per stretch: ' + ' '.join(f'{r:.2f}' for r in ratios))
    print(f'trainer/steps: {statistics.median(ratios):.2f}')


def main():
    parser = argparse.ArgumentParser(description='Training throughput, labml_nn stock GPT vs this project.')
    parser.add_argument('overrides', nargs='*', help='extra key=value overrides for both models')
    parser.add_argument('--shape', choices=SHAPES, default='small')
    parser.add_argument('--batch', type=int, help='batch size (default: the shape\'s)')
    parser.add_argument('--dtype', choices=['auto', 'float32', 'bfloat16', 'float16'], default='auto',
                        help="this project's dtype (default: auto, what a run takes)")
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--compile', action='store_true', help='torch.compile the fast model')
    parser.add_argument('--stock-dtype', choices=['float32', 'bfloat16', 'float16'], default='float32',
                        help='autocast dtype of the stock recipe (labml_nn trains in float32)')
    parser.add_argument('--profile', nargs='*', choices=['fast', 'stock', 'nanogpt'],
                        help='then profile these steps (default: the fast one)')
    parser.add_argument('--nanogpt-bias', action='store_true',
                        help="biases in the nanoGPT reference's linear layers and LayerNorms (its train.py: none)")
    parser.add_argument('--strip-biases', action='store_true',
                        help="this project's model without the biases of its linear layers: not labml_nn's "
                             "function, a measure of what those biases cost")
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--end-to-end', action='store_true')
    args = parser.parse_args()
    if args.profile == []:
        args.profile = ['fast']

    shape = dict(SHAPES[args.shape])
    if args.batch:
        shape['batch'] = args.batch
    # Parsed to their types here, since the stock configs get them too, against labml_nn's
    # configs (our `Configs` must not exist before the stock ones are computed; see `compare`).
    import labml_nn.transformers.gpt as stock_gpt
    overrides = {**shape_overrides(shape), 'device.use_cuda': args.device == 'cuda',
                 **check_overrides(stock_gpt.Configs, overrides_from_args(args.overrides))}
    (end_to_end if args.end_to_end else compare)(args, overrides)


if __name__ == '__main__':
    main()
