"""
The numbers people watch (`lr`, `grad_norm`, `tokens_per_second`) at every training report, and
`valid_batches`: random validation batches, with the run's last validation over the whole split.
"""

import math

import pytest
import torch

from gpt_experiment import train, trainer

from conftest import TINY, read_scalars, run_dirs


def test_every_training_report_tracks_lr_grad_norm_and_throughput(project):
    conf = train({**TINY, 'text': 'corpus.txt', 'epochs': 2, 'inner_iterations': 2, 'log_interval': 3,
                 'sample_tokens': 2, 'warmup_steps': 10 * 8 * 16}, name='watch', writers='sqlite')
    run = run_dirs(project, 'watch')[0]
    train_steps = [s for s, _ in read_scalars(run, 'loss.train')]
    lr, grad_norm, tps = (read_scalars(run, k) for k in ('lr', 'grad_norm', 'tokens_per_second'))
    assert len(train_steps) > 4
    for values in (lr, grad_norm, tps):
        assert [s for s, _ in values] == train_steps
        assert all(math.isfinite(v) and v > 0 for _, v in values)
    # lr is the schedule's: it rises through the 10 warm-up steps, then decays
    lrs = [v for _, v in lr]
    peak = lrs.index(max(lrs))
    assert 0 < peak < len(lrs) - 1 and lrs[0] < lrs[peak] > lrs[-1]
    assert max(lrs) <= conf.learning_rate * (1 + 1e-6)


def test_grad_norm_is_the_norm_before_clipping(tiny_configs):
    conf = tiny_configs(epochs=1)
    model = conf.model
    data, target, _ = next(conf.train_loader.epoch(0))
    # the step's own gradients, before it clips them (at grad_norm_clip = 1)
    norms = []
    real = conf.optimizer.clip_grad_norm_

    def spy(max_norm):
        norms.append(torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None]).item())
        return real(max_norm)
    real_loss = torch.nn.functional.cross_entropy
    with pytest.MonkeyPatch.context() as m:
        m.setattr(conf.optimizer, 'clip_grad_norm_', spy)
        # a large loss, so that clipping cuts the gradients
        m.setattr(torch.nn.functional, 'cross_entropy', lambda *a, **k: real_loss(*a, **k) * 1000)
        conf.train_step(data, target)
    reported = conf._metrics.report(torch.device('cpu'), 'train')
    assert norms[0] > conf.grad_norm_clip * 10
    assert reported['grad_norm'] == pytest.approx(norms[0], rel=1e-5)
    assert reported['tokens_per_second'] > 0


def test_valid_batches_are_random_and_the_last_validation_is_whole(project, monkeypatch):
    sizes = []
    report = trainer.StepMetrics.report

    def spy(self, device, split):
        if split == 'valid':
            sizes.append(self.steps)
        return report(self, device, split)

    monkeypatch.setattr(trainer.StepMetrics, 'report', spy)
    conf = train({**TINY, 'text': 'corpus.txt', 'epochs': 2, 'inner_iterations': 3, 'valid_batches': 2,
                 'sample_tokens': 2}, name='valid', writers='sqlite')
    whole = len(conf.valid_loader)
    assert whole > 2
    # six validations: five of 2 random batches, the last over the whole split
    assert sizes == [2] * 5 + [whole]
    assert len(read_scalars(run_dirs(project, 'valid')[0], 'loss.valid')) == 6


def test_negative_valid_batches_is_a_user_error(tiny_configs):
    from gpt_experiment import UserError
    with pytest.raises(UserError, match='valid_batches must be at least 0, got -1'):
        tiny_configs(valid_batches=-1)


def test_uneven_micro_batches_report_their_batch_mean_loss():
    from gpt_experiment.trainer import StepMetrics
    metrics = StepMetrics()
    target = torch.zeros(4, 2, dtype=torch.long)
    output = torch.zeros(4, 2, 3)
    # one batch of 10 windows in micro-batches of 8 and 2: mean losses 1.0 and 2.0
    metrics.add(10, torch.tensor(1.0), output, target, share=0.8)
    metrics.add(10, torch.tensor(2.0), output, target, share=0.2)
    # and a whole batch with mean loss 3.0
    metrics.add(20, torch.tensor(3.0), output, target)
    values = metrics.report(torch.device('cpu'), 'train')
    # the mean of the two batches' losses, 1.2 and 3.0
    assert values['loss.train'] == pytest.approx(2.1)
