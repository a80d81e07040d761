"""
# nanoGPT's CPU recipe, end to end, for timing against `configs/cpu_quick.yaml`

nanoGPT's README trains its Shakespeare character model on a CPU with

```
python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 \\
    --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 \\
    --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0
```

This is that run, written from nanoGPT's public `data/shakespeare_char/prepare.py`,
`config/train_shakespeare_char.py` and `train.py`, on the model of [nanogpt](nanogpt.py):

* the data: the characters of Tiny Shakespeare, the first 90% training and the rest
  validating, each batch `batch_size` windows at random offsets (`get_batch`);
* AdamW, decay 0.1 on the parameters of two or more dimensions, betas (0.9, 0.99), clipping at
  1.0; the learning rate 1e-3 after 100 warm-up iterations, a cosine down to 1e-4 at 2,000;
* an evaluation every 250 iterations, the first at iteration 0 and the last at 2,000: the mean
  loss of 20 random batches of each split (`estimate_loss`).

It prints the last evaluation's losses, and with `--whole-split` also the loss over every
window of the validation split (as cpu_quick reports its own), after the timing. Time the
whole process from outside, beside `gpt-train configs/cpu_quick.yaml`:

```
/usr/bin/time python benchmarks/nanogpt_recipe.py
```
"""

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import nanogpt  # noqa: E402
from gpt_experiment import corpus  # noqa: E402
from gpt_experiment.configs import cpu_name  # noqa: E402

# train_shakespeare_char.py with the README's CPU overrides
BLOCK_SIZE, BATCH_SIZE, N_LAYER, N_HEAD, N_EMBD = 64, 12, 4, 4, 128
MAX_ITERS, LR_DECAY_ITERS, WARMUP_ITERS = 2000, 2000, 100
LEARNING_RATE, MIN_LR, BETA2, WEIGHT_DECAY = 1e-3, 1e-4, 0.99, 0.1
EVAL_INTERVAL, EVAL_ITERS = 250, 20


def get_lr(it: int) -> float:
    """train.py's schedule: a linear warm-up, then a cosine down to `MIN_LR`."""
    if it < WARMUP_ITERS:
        return LEARNING_RATE * (it + 1) / (WARMUP_ITERS + 1)
    if it > LR_DECAY_ITERS:
        return MIN_LR
    ratio = (it - WARMUP_ITERS) / (LR_DECAY_ITERS - WARMUP_ITERS)
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LEARNING_RATE - MIN_LR)


def main():
    parser = argparse.ArgumentParser(description="nanoGPT's CPU recipe on Tiny Shakespeare")
    parser.add_argument('--whole-split', action='store_true',
                        help='after the run, also the loss over every window of the validation split')
    args = parser.parse_args()
    print(f'{cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads', flush=True)
    torch.manual_seed(1337)
    # prepare.py: the sorted characters, the first 90% training
    (part,) = corpus.tiny_shakespeare().parts
    text = part.open().read().decode('utf-8')
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    n = int(0.9 * len(ids))
    data = {'train': torch.from_numpy(ids[:n].astype(np.int64)), 'val': torch.from_numpy(ids[n:].astype(np.int64))}

    def get_batch(split: str):
        d = data[split]
        ix = torch.randint(len(d) - BLOCK_SIZE, (BATCH_SIZE,))
        x = torch.stack([d[i:i + BLOCK_SIZE] for i in ix])
        y = torch.stack([d[i + 1:i + 1 + BLOCK_SIZE] for i in ix])
        return x, y

    model = nanogpt.GPT(n_vocab=len(chars), seq_len=BLOCK_SIZE, n_layers=N_LAYER, d_model=N_EMBD, n_heads=N_HEAD)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{'params': [p for p in params if p.dim() >= 2], 'weight_decay': WEIGHT_DECAY},
                                   {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}],
                                  lr=LEARNING_RATE, betas=(0.9, BETA2))

    @torch.no_grad()
    def estimate_loss():
        model.eval()
        out = {split: torch.stack([model(*get_batch(split))[1] for _ in range(EVAL_ITERS)]).mean().item()
               for split in ('train', 'val')}
        model.train()
        return out

    started = time.perf_counter()
    for it in range(MAX_ITERS + 1):
        if it % EVAL_INTERVAL == 0:
            losses = estimate_loss()
            print(f'step {it}: train loss {losses["train"]:.4f}, val loss {losses["val"]:.4f}', flush=True)
        if it == MAX_ITERS:
            break
        nanogpt.train_step(model, optimizer, *get_batch('train'), lr=get_lr(it))
    print(f'{MAX_ITERS} iterations in {time.perf_counter() - started:.1f} s; last val loss {losses["val"]:.4f} '
          f'(20 random batches)')
    if args.whole_split:
        # every window of `BLOCK_SIZE` of the validation split, one after the other
        model.eval()
        val = data['val']
        starts = torch.arange(0, len(val) - BLOCK_SIZE - 1, BLOCK_SIZE)
        with torch.no_grad():
            total = [model(torch.stack([val[s:s + BLOCK_SIZE] for s in chunk]),
                           torch.stack([val[s + 1:s + 1 + BLOCK_SIZE] for s in chunk]))[1] * len(chunk)
                     for chunk in starts.split(64)]
        print(f'val loss over the whole split: {(sum(total) / len(starts)).item():.4f}')


if __name__ == '__main__':
    main()
