"""
Checkpoints at research scale: only the newest `keep_checkpoints` and the best are kept, never
one that is being read; weights are safetensors; micro-batches make the whole batch's update.
"""

import copy

import pytest
import torch

from gpt_experiment import checkpoints, train, trainer

from conftest import TINY, checkpoint_steps, run_dirs

RUN = {**TINY, 'text': 'corpus.txt', 'inner_iterations': 1, 'sample_tokens': 2, 'checkpoint_minutes': 0,
       'learning_rate': 3e-3, 'warmup_steps': 256}
# An epoch of the test corpus: 259 windows of 16 tokens
EPOCH = 259 * 16


def _valid_losses(monkeypatch, losses):
    """Validations that report `losses`, one after the other (the training is real)."""
    report, given = trainer.StepMetrics.report, iter(losses)

    def crafted(self, device, split):
        values = report(self, device, split)
        if split == 'valid':
            values['loss.valid'] = next(given)
        return values
    monkeypatch.setattr(trainer.StepMetrics, 'report', crafted)


@pytest.mark.slow
def test_only_the_newest_and_the_best_checkpoints_are_kept(project, monkeypatch):
    # the second epoch's validation is the best of the run
    with pytest.MonkeyPatch.context() as m:
        _valid_losses(m, [3.0, 1.0, 2.0, 2.5, 2.6, 2.7])
        train({**RUN, 'epochs': 6, 'keep_checkpoints': 2}, name='kept', writers='sqlite')
    (run,) = run_dirs(project, 'kept')
    assert checkpoint_steps(run) == [2 * EPOCH, 5 * EPOCH, 6 * EPOCH]
    # nothing half removed, nothing left aside
    assert sorted(p.name for p in run.iterdir() if p.name.startswith('.')) == []
    # and each kept one resumes
    for step in checkpoint_steps(run):
        train({'epochs': step // EPOCH + 1}, resume=run.name, checkpoint=step, writers='sqlite')


def test_keep_checkpoints_0_keeps_them_all(project):
    train({**RUN, 'epochs': 4, 'keep_checkpoints': 0}, name='all', writers='sqlite')
    assert checkpoint_steps(run_dirs(project, 'all')[0]) == [EPOCH * k for k in range(1, 5)]


def test_a_checkpoint_being_read_is_not_removed(project):
    train({**RUN, 'epochs': 3, 'keep_checkpoints': 0}, name='read', writers='sqlite')
    (run,) = run_dirs(project, 'read')
    root = run / 'checkpoints'
    # a resume or a generate of the oldest one in progress (in any process: `flock` is the kernel's)
    with checkpoints.reading(root / str(EPOCH)):
        checkpoints.prune(root, keep=1)
        assert checkpoint_steps(run) == [EPOCH, 3 * EPOCH]
    checkpoints.prune(root, keep=1)
    assert checkpoint_steps(run) == [3 * EPOCH]


def test_weights_are_safetensors_without_the_fixed_positional_table(project):
    conf = train({**RUN, 'epochs': 1}, name='weights', writers='sqlite')
    (run,) = run_dirs(project, 'weights')
    ckpt = run / 'checkpoints' / str(EPOCH)
    assert {p.name for p in ckpt.iterdir()} == {'model.safetensors', 'training.pth', 'info.json'}
    from safetensors import safe_open
    with safe_open(str(ckpt / 'model.safetensors'), 'pt') as f:
        names = set(f.keys())
    # every parameter, and not labml_nn's 5,000-row sinusoidal table, which the model recomputes
    assert names == {n for n, _ in conf.model.named_parameters()}
    assert (ckpt / 'model.safetensors').stat().st_size < 1.2 * 4 * sum(p.numel() for p in conf.model.parameters())


def test_a_tied_matrix_is_saved_once_and_loads_tied(project):
    conf = train({**RUN, 'epochs': 1, 'tie_embeddings': True}, name='tied', writers='sqlite')
    (run,) = run_dirs(project, 'tied')
    fresh = copy.deepcopy(conf.model)
    torch.nn.init.zeros_(fresh.src_embed.linear.weight)
    checkpoints.load_weights(fresh, run / 'checkpoints' / str(EPOCH) / 'model.safetensors')
    assert fresh.generator.projection.weight is fresh.src_embed.linear.weight
    assert torch.equal(fresh.src_embed.linear.weight, conf.model.src_embed.linear.weight)


@pytest.mark.parametrize('micro', [1, 3, 4])
def test_micro_batches_make_the_whole_batchs_update(tiny_configs, micro):
    """Five steps on batches of 8, whole or in micro-batches of 1, 3 (3 + 3 + 2) or 4: the same weights (fp32)."""
    whole, split = tiny_configs(), tiny_configs(micro_batch_size=micro)
    split.model.load_state_dict(whole.model.state_dict())
    batches = list(whole.train_loader.epoch(0))[:5]
    for x, y, _ in batches:
        whole.train_step(x, y)
        split.train_step(x, y)
    a, b = (torch.cat([p.detach().flatten() for p in c.model.parameters()]) for c in (whole, split))
    assert ((a - b).norm() / a.norm()).item() < 1e-6
    # not trivially: the weights moved
    assert not torch.equal(a, torch.cat([p.detach().flatten() for p in tiny_configs().model.parameters()]))
    # every micro-batch's tokens are counted
    assert split._metrics.count == whole._metrics.count == 5 * 8 * 16
