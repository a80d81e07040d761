"""
The learning-rate schedule as a run follows it: the `lr` a run tracks at every training step
(`log_interval=1`), read back from its `sqlite.db`.
"""

import pytest

from gpt_experiment import train

from conftest import TINY, read_scalars, run_dirs

MAX_LR = 3e-3
# ten steps of 8 x 16 tokens
WARMUP_TOKENS = 8 * 16 * 10
RUN = {**TINY, 'text': 'corpus.txt', 'epochs': 2, 'inner_iterations': 1, 'sample_tokens': 2, 'log_interval': 1,
       'learning_rate': MAX_LR, 'warmup_steps': WARMUP_TOKENS, 'is_save_models': False}


def tracked_lr(project, name, **extra):
    """`(global step in tokens, lr)` of every training step of a run."""
    conf = train({**RUN, **extra}, name=name, writers='sqlite')
    lr = read_scalars(run_dirs(project, name)[0], 'lr')
    # every training step is reported: two epochs of the training split's batches
    assert len(lr) == 2 * len(conf.train_loader) > 30
    return lr


def check_warmup_then_decay(lr):
    rates = [v for _, v in lr]
    # up for the warm-up's tokens, where it reaches `learning_rate`, its peak
    peak = rates.index(max(rates))
    assert lr[peak][0] == WARMUP_TOKENS and rates[peak] == pytest.approx(MAX_LR)
    assert all(a < b for a, b in zip(rates[:peak], rates[1:peak + 1]))
    # then down to the last step, never back up
    assert all(a >= b for a, b in zip(rates[peak:], rates[peak + 1:]))
    # a cosine: half the peak half way through the decay, from step `peak + 1` to the last
    assert rates[peak + (len(rates) - 1 - peak) // 2] == pytest.approx(MAX_LR / 2, rel=0.05)
    return rates


def test_warmup_in_tokens_then_a_cosine_to_a_tenth(project):
    rates = check_warmup_then_decay(tracked_lr(project, 'default'))
    # labml_nn's decay stops at 10% of the peak, which the last step reaches
    assert rates[-1] == pytest.approx(MAX_LR / 10)


def test_gpt1_schedule_decays_to_zero(project):
    rates = check_warmup_then_decay(tracked_lr(project, 'gpt1', **{'optimizer.optimizer': 'AdamWarmupCosineToZero'}))
    assert rates[-2] > 0 and rates[-1] == pytest.approx(0, abs=1e-12)

