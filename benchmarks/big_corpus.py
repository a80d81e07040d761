"""
# A corpus larger than you would hold in memory

Tokenises a text file into its memory-mapped token file (timing the throughput in MB/s), then
trains a tiny model for `--steps` steps on windows gathered from the memmap, and prints the
peak resident memory of the whole process (`ru_maxrss`).

```
python benchmarks/big_corpus.py /tmp/big.txt --tokenizer character
python benchmarks/big_corpus.py /tmp/big.txt --tokenizer bpe
```

Make a 500 MB test file (never commit it) with:
`python -c "import gzip; t=gzip.open('gpt_experiment/data/tiny_shakespeare.txt.gz').read(); open('/tmp/big.txt','wb').write(t * 470)"`.
Delete `/tmp/big.txt.cache/` to time the tokenising again.
"""

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt_experiment import Configs  # noqa: E402
from gpt_experiment.configs import cpu_name  # noqa: E402
from gpt_experiment.overrides import check_overrides  # noqa: E402

from throughput import build  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('path')
    parser.add_argument('--tokenizer', default='character', choices=['character', 'bpe'])
    parser.add_argument('--steps', type=int, default=40)
    args = parser.parse_args()
    overrides = {'text': args.path, 'tokenizer': args.tokenizer, 'seq_len': 64, 'batch_size': 16,
                 'transformer.d_model': 64, 'transformer.n_heads': 2, 'transformer.n_layers': 2,
                 'transformer.ffn.d_ff': 128}
    c = build(Configs, check_overrides(Configs, overrides))
    print(f'{cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads')
    size = Path(args.path).stat().st_size
    start = time.perf_counter()
    text = c.text
    seconds = time.perf_counter() - start
    print(f'{text}\nloaded {size / 1e6:,.0f} MB in {seconds:.1f}s: {size / 1e6 / seconds:.1f} MB/s '
          f'(training the tokenizer included, when it was not cached)')
    model, optimizer = c.model, c.optimizer
    batches = c.train_loader.epoch(0)
    for _ in range(args.steps):
        x, y, _ = next(batches)
        logits, _ = model(x)
        loss = c.loss_func(logits, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    print(f'{args.steps} training steps, loss {loss.item():.3f}')
    print(f'peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB')


if __name__ == '__main__':
    main()
