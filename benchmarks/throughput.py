"""
# Training throughput: labml_nn's stock GPT against this project's fast path

In one process, on the same shape, batch and data, this times whole training steps (forward,
loss, backward, gradient clipping, optimizer step) of

* **stock**: labml_nn's own GPT recipe (`labml_nn.transformers.gpt`: its `GPT` class,
  `MultiHeadAttention`, `AdamWarmupCosineDecay`), in fp32, and
* **fast**: `gpt_experiment.Configs` with `sdpa` attention, the foreach optimizer and the
  requested `--dtype` / `--compile`,

alternating one stock step and one fast step so that both see the same machine load. For
each it prints the median step time, tokens/s and the model FLOPs utilisation (MFU) against a
matrix-product peak measured on the spot in the same dtype. The last line is
`speedup: X.XX`, stock step time over fast step time.

```
python benchmarks/throughput.py --shape small                    # 4 layers, 128 wide, context 64, batch 12
python benchmarks/throughput.py --shape default --batch 16       # 6 layers, 512 wide, context 128
python benchmarks/throughput.py --shape default --batch 16 --dtype bfloat16
python benchmarks/throughput.py --shape small --end-to-end       # the trainer against the pure step rate
```

`--end-to-end` runs the real trainer (`Configs.run()` with labml tracking on, sqlite writer)
for one epoch of a slice of Tiny Shakespeare, and compares its tokens/s over the training
stretches with the pure step rate of the same configs; the last line is
`trainer/steps: X.XX`.
"""

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labml import experiment, lab, tracker  # noqa: E402

from gpt_experiment import Configs  # noqa: E402
from gpt_experiment.configs import compute_ahead  # noqa: E402
from gpt_experiment.optimizer import clip_grad_norm_  # noqa: E402
from gpt_experiment.cli import check_overrides, overrides_from_args  # noqa: E402
from gpt_experiment.train import project_path  # noqa: E402

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


def train_step(model, optimizer, loss_func, x, y, dtype, clip):
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
        output, *_ = model(x)
        loss = loss_func(output, y)
    loss.backward()
    # `torch.nn.utils.clip_grad_norm_` for labml_nn's optimizer; folded into the step for ours,
    # as the trainer does it
    clip_grad_norm_(optimizer, model.parameters(), clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def compare(args, overrides: dict):
    import labml_nn.transformers.gpt as stock_gpt
    warnings.filterwarnings('ignore', message='Overriding option')
    # Stock first: labml 0.4.168 copies a subclass's defaults into its base classes' config
    # items when the subclass is instantiated, so labml_nn's configs must be computed before
    # ours exist.
    stock = build(stock_gpt.Configs, {'text': 'tiny_shakespeare', 'tokenizer': 'character',
                                     'prompt_separator': '', 'prompt': 'It is ', **overrides})
    stock_model, stock_optimizer = stock.model, stock.optimizer
    fast = build(Configs, check_overrides(Configs, {
        **overrides, 'transformer.encoder_attn': 'sdpa', 'optimizer.optimizer': 'FusedAdamWarmupCosineDecay',
        'dtype': args.dtype, 'compile': args.compile}))
    device = fast.device
    models = {'stock': stock_model.to(device), 'fast': fast.train_model}
    optimizers = {'stock': stock_optimizer, 'fast': fast.optimizer}
    dtypes = {'stock': torch.float32, 'fast': fast.dtype}
    times = {'stock': [], 'fast': []}
    batches = iter(fast.train_loader)
    for i in range(args.warmup + args.steps):
        x, y = next(batches)
        for name in times:
            _sync(device)
            start = time.perf_counter()
            train_step(models[name], optimizers[name], fast.loss_func, x, y, dtypes[name], fast.grad_norm_clip)
            _sync(device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)

    shape = SHAPES[args.shape]
    per_token = flops_per_token(fast.model, fast.transformer.n_layers, fast.transformer.d_model, fast.seq_len)
    tokens = x.numel()
    print(f'device: {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; '
          f'shape {args.shape} {shape_overrides(shape) | overrides}; {per_token / 1e6:.1f} MFLOP/token')
    for name in times:
        peak = matmul_peak(dtypes[name], device)
        seconds = statistics.median(times[name])
        mfu = per_token * tokens / seconds / peak
        print(f'{name:>5} ({str(dtypes[name]).replace("torch.", "")}): {seconds * 1000:9.1f} ms/step '
              f'{tokens / seconds:12,.0f} tokens/s   MFU {mfu:6.1%} of {peak / 1e9:,.0f} GFLOP/s')
    print(f'speedup: {statistics.median(times["stock"]) / statistics.median(times["fast"]):.2f}')


class TimedConfigs(Configs):
    """The trainer, with the wall time of its training stretches added up."""
    _train_seconds = 0.0

    def run_step(self):
        for _ in range(self.inner_iterations):
            with tracker.namespace('sample'):
                self.sample()
            start = time.perf_counter()
            with self.mode.update(is_train=True):
                with tracker.namespace('train'):
                    self.trainer()
            TimedConfigs._train_seconds += time.perf_counter() - start
            with tracker.namespace('valid'):
                self.validator()
            tracker.save()


def end_to_end(args, overrides: dict):
    # One epoch over the first 200k characters of Tiny Shakespeare.
    source = lab.get_data_path() / 'tiny_shakespeare.txt'
    if not source.exists():
        sys.exit(f'error: {source} is missing')
    text = Path('/tmp/gpt_experiment_e2e.txt')
    text.write_text(source.read_text()[:200_000])
    overrides = {**overrides, 'text': str(text), 'epochs': 1, 'inner_iterations': 2, 'dtype': args.dtype,
                 'compile': args.compile, 'transformer.encoder_attn': 'sdpa',
                 'optimizer.optimizer': 'FusedAdamWarmupCosineDecay', 'is_save_models': False}

    # The pure step rate of the same configs, on the same batches, before and after the trainer
    # runs (the machine's speed drifts; the mean of the two brackets the trainer's run).
    conf = build(Configs, check_overrides(Configs, overrides))

    def pure_rate():
        times = []
        for i, (x, y) in enumerate(conf.train_loader):
            if i == args.warmup + args.steps:
                break
            start = time.perf_counter()
            train_step(conf.train_model, conf.optimizer, conf.loss_func, x, y, conf.dtype, conf.grad_norm_clip)
            _sync(conf.device)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
        return x.numel() / statistics.median(times)

    before = pure_rate()
    # The trainer itself, tracking to sqlite.
    experiment.create(name='throughput_e2e', writers={'sqlite'}, python_file=project_path())
    timed = TimedConfigs()
    experiment.configs(timed, check_overrides(Configs, overrides))
    experiment.add_pytorch_models({'model': timed.model})
    compute_ahead(timed)
    tracker.set_global_step(0)
    with experiment.start():
        timed.run()
    trainer = tracker.get_global_step() / TimedConfigs._train_seconds
    after = pure_rate()
    pure = (before + after) / 2
    print(f'pure steps: {pure:,.0f} tokens/s (before {before:,.0f}, after {after:,.0f})')
    print(f'trainer:    {trainer:,.0f} tokens/s over {tracker.get_global_step():,} tokens')
    print(f'trainer/steps: {trainer / pure:.2f}')


def main():
    parser = argparse.ArgumentParser(description='Training throughput, labml_nn stock GPT vs this project.')
    parser.add_argument('overrides', nargs='*', help='extra key=value overrides for both models')
    parser.add_argument('--shape', choices=SHAPES, default='small')
    parser.add_argument('--batch', type=int, help='batch size (default: the shape\'s)')
    parser.add_argument('--dtype', choices=['float32', 'bfloat16', 'float16'], default='float32')
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--compile', action='store_true', help='torch.compile the fast model')
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--end-to-end', action='store_true')
    args = parser.parse_args()

    shape = dict(SHAPES[args.shape])
    if args.batch:
        shape['batch'] = args.batch
    overrides = {**shape_overrides(shape), 'device.use_cuda': args.device == 'cuda',
                 **overrides_from_args(args.overrides)}
    (end_to_end if args.end_to_end else compare)(args, overrides)


if __name__ == '__main__':
    main()
