r"""
# The learning-rate schedule

GPT's learning rate rises linearly over $w$ warm-up steps, then falls along a cosine over the
rest of training, $T$ optimizer steps in all:

$$\alpha_t = \alpha \frac{t}{w} \quad (t < w), \qquad
  \alpha_t = \alpha \max\Big(0.1, \frac{1}{2}\big(1 + \cos(\pi \frac{t - w}{T - w})\big)\Big) \quad (t \ge w)$$

The rule is labml_nn's `AdamWarmupCosineDecay.get_lr`, which the optimizers of
[optimizer](optimizer.html) inherit: each optimizer step computes $\alpha_t$ from its own step
count, so a resumed run continues the curve where it stopped, and every training report tracks
it as `lr` ([metrics](metrics.html)). labml_nn floors it at $0.1\alpha$;
`optimizer.optimizer=AdamWarmupCosineToZero` (below, GPT-1's) takes it to zero.

The labml recipe gives the warm-up in *tokens* (`warmup_steps = 128 * 128 * 20`), and the
length as `epochs`; the optimizer counts steps. `warmup` and `total_steps` convert them.
"""

import math
from typing import Dict

from .optimizer import FusedAdamWarmupCosineDecay, optimizer_option


def warmup(warmup_tokens: int, tokens_per_step: int) -> int:
    """$w$: the warm-up in optimizer steps, from the recipe's tokens."""
    # A step trains on `batch_size * seq_len` tokens.
    return warmup_tokens // tokens_per_step


def total_steps(epochs: int, batches_per_epoch: int) -> int:
    """
    $T$: every optimizer step of training. Counting the last, partial batch of each epoch (about
    `epochs * training tokens / (batch_size * seq_len)` in all) keeps the cosine from turning
    back up at the end.
    """
    return epochs * batches_per_epoch


@optimizer_option
class AdamWarmupCosineToZero(FusedAdamWarmupCosineDecay):
    r"""
    ## Warm-up, then cosine decay to zero

    $\alpha_t = \alpha \frac{t}{w}$ for $t < w$, then
    $\alpha_t = \frac{\alpha}{2}\big(1 + \cos(\pi \frac{t - w}{T - w})\big)$, which reaches $0$ at
    the last step $T$ and stays there (labml_nn's `AdamWarmupCosineDecay` floors it at $0.1\alpha$).
    """

    def get_lr(self, state: Dict[str, any], group: Dict[str, any]):
        if group['warmup'] > state['step']:
            # linear warm-up, from labml_nn's $10^{-8}$ rather than zero
            return 1e-8 + state['step'] * group['lr'] / group['warmup']
        # the share of the decay done, $\frac{t - w}{T - w}$, at most 1
        progress = min(1.0, (state['step'] - group['warmup']) / max(1, group['total_steps'] - group['warmup']))
        return group['lr'] * 0.5 * (1.0 + math.cos(math.pi * progress))
