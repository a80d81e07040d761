"""
End to end: a short run lowers the loss and leaves a checkpoint that loads into a fresh
model; the command line trains from a preset and `--help` lists the keys.
"""

import math

import pytest
import torch
import yaml

from gpt_experiment import Configs
# `gpt_experiment.main` is also the name of the command-line submodule, which replaces the
# package attribute once imported; take the function from where it is defined.
from gpt_experiment import train

from conftest import CORPUS, REPO_ROOT, TINY, checkpoint_steps, make_configs, read_scalars, run_cli, run_dirs, write_project, weights

# A tiny model, a short warm-up and a high learning rate: the repeated paragraph is learnt fast.
E2E = {**TINY, 'text': 'corpus.txt', 'epochs': 3, 'inner_iterations': 1, 'learning_rate': 5e-3,
       'warmup_steps': 256, 'sample_tokens': 5}


def _tokens_per_epoch(seq_len: int) -> int:
    """Every epoch trains one window in each seq_len-long stretch of the 90% training split."""
    n_train = int(len(CORPUS) * 0.9)
    return (n_train - 1) // seq_len * seq_len


def test_short_run_lowers_the_loss_and_saves_a_loadable_checkpoint(project):
    conf = train(dict(E2E), name='e2e')
    assert isinstance(conf, Configs)

    runs = run_dirs(project, 'e2e')
    assert len(runs) == 1
    run = runs[0]

    # The loss, as labml recorded it, falls by a clear margin.
    losses = [v for _, v in read_scalars(run, 'loss.train')]
    assert len(losses) >= 4
    assert all(math.isfinite(v) for v in losses)
    # the first report is near chance level, -log(1 / vocabulary size)
    assert losses[0] > 0.8 * math.log(conf.n_tokens)
    assert losses[-1] < losses[0] - 0.6, losses
    valid = [v for _, v in read_scalars(run, 'loss.valid')]
    assert len(valid) == E2E['epochs']
    assert valid[-1] < valid[0]
    accuracy = [v for _, v in read_scalars(run, 'accuracy.train')]
    assert len(accuracy) == len(losses) and accuracy[-1] > accuracy[0]

    # A checkpoint of the final model, at the last step.
    steps = checkpoint_steps(run)
    assert steps, f'no checkpoint under {run / "checkpoints"}'
    state = weights(run / 'checkpoints' / str(steps[-1]))

    # A fresh model from fresh configs with the same overrides starts elsewhere...
    fresh = make_configs(dict(E2E)).model
    trained = conf.model
    assert state.keys() == fresh.state_dict().keys()
    assert not all(torch.equal(state[k], v) for k, v in fresh.state_dict().items())
    # ...and after loading the checkpoint gives the trained model's logits exactly.
    fresh.load_state_dict(state)
    fresh.eval()
    trained.eval()
    torch.manual_seed(0)
    x = torch.randint(0, conf.n_tokens, (conf.seq_len, 4))
    with torch.no_grad():
        expected, _ = trained(x)
        got, _ = fresh(x)
    assert torch.equal(got, expected)


@pytest.mark.slow
def test_command_line_trains_from_a_preset(tmp_path):
    project = write_project(tmp_path / 'project')
    preset = project / 'tiny.yaml'
    preset.write_text(yaml.safe_dump({
        'transformer': {'d_model': 32, 'n_heads': 2, 'n_layers': 2, 'dropout': 0.0, 'ffn': {'d_ff': 64}},
        'seq_len': 16, 'batch_size': 8, 'epochs': 3, 'inner_iterations': 1}), encoding='utf-8')
    # the argument after the preset wins
    result = run_cli([str(preset), 'text=corpus.txt', 'epochs=1', 'transformer.n_layers=1', 'sample_tokens=3',
                      '--name', 'cli'], cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'Traceback' not in result.stdout + result.stderr

    runs = run_dirs(project, 'cli')
    assert len(runs) == 1
    # labml's global step counts tokens: one epoch of 16-token windows
    expected_step = _tokens_per_epoch(16)
    assert checkpoint_steps(runs[0])[-1] == expected_step
    assert (runs[0] / 'checkpoints' / str(expected_step) / 'model.safetensors').is_file()

    configs = yaml.safe_load((runs[0] / 'configs.yaml').read_text(encoding='utf-8'))
    assert configs['transformer.n_layers']['computed'] == 1
    assert configs['transformer.d_model']['computed'] == 32
    # labml_nn's top-level width records the width the model has, not labml_nn's 512
    assert configs['d_model']['computed'] == 32
    assert configs['epochs']['computed'] == 1
    # one layer: the checkpoint has layer 0 and no layer 1
    state = weights(runs[0] / 'checkpoints' / str(expected_step))
    assert any(k.startswith('encoder.layers.0.') for k in state)
    assert not any(k.startswith('encoder.layers.1.') for k in state)


def _help(project, *args):
    result = run_cli([*args, '--help'], cwd=project)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ''
    lines = result.stdout.split('config keys')[1].splitlines()[1:]
    # each key on one line, its description on the next
    return {key.split()[0]: (key, about.strip()) for key, about in zip(lines[::2], lines[1::2])}


def test_help_tells_what_a_run_would_use(tmp_path):
    project = write_project(tmp_path / 'project')
    keys = _help(project)
    # the values a run uses, not the nested classes' own (mha, SGD, ReLU)
    for key, value in [('transformer.n_layers', 'int    6'), ('transformer.encoder_attn', 'option sdpa'),
                       ('optimizer.optimizer', 'option AdamWarmupCosineDecay'),
                       ('transformer.ffn.activation', 'option GELU'), ('optimizer.betas', 'floats [0.9, 0.95]'),
                       ('learning_rate', 'float  0.0006'), ('tokenizer', 'option character   (options: character, bpe)')]:
        assert value in keys[key][0], keys[key]
    # a one-line description of every key
    assert all(about for _, about in keys.values()), [k for k, (_, about) in keys.items() if not about]
    # no internal keys, and no tokenizer that does not work
    assert not {'trainer', 'validator', 'loop_step', 'state_modules', 'device.device_info', 'model', 'n_tokens',
                'transformer.n_src_vocab', 'd_model'} & set(keys)
    assert 'basic_english' not in keys['tokenizer'][0]
    # with a preset, the preset's values
    assert 'int    112' in _help(project, str(REPO_ROOT / 'configs' / 'cpu_quick.yaml'))['transformer.d_model'][0]
    assert not (project / 'logs').exists()


@pytest.mark.slow
@pytest.mark.parametrize('preset', [None, 'labml_gpt.yaml', 'cpu_quick.yaml', 'gpt1.yaml'])
def test_the_default_corpus_ships_with_the_package(tmp_path, preset):
    """
    A fresh project with no `data/` folder (and no network needed): the default command and
    every preset train on the packaged Tiny Shakespeare (shrunk here to a tiny model).
    """
    project = tmp_path / 'fresh'
    project.mkdir()
    (project / '.labml.yaml').write_text('check_repo_dirty: false\n', encoding='utf-8')
    presets = [str(REPO_ROOT / 'configs' / preset)] if preset else []
    shrink = ['seq_len=16', 'batch_size=2048', 'epochs=1', 'inner_iterations=1', 'transformer.d_model=8',
              'transformer.n_heads=1', 'transformer.n_layers=1', 'transformer.ffn.d_ff=8', 'bpe_vocab_size=300']
    result = run_cli([*presets, *shrink, '--writers', 'sqlite'], cwd=project, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (project / 'data').exists()
    run, = run_dirs(project, 'gpt')
    assert len(read_scalars(run, 'loss.valid')) == 1


def _modes_after(monkeypatch, method: str) -> list:
    """The set of the model's modules' `training` flags after each call of `Trainer.<method>`."""
    from gpt_experiment import trainer
    seen = []
    real = getattr(trainer.Trainer, method)

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)
        seen.append({m.training for m in self.model.modules()})
    monkeypatch.setattr(trainer.Trainer, method, spy)
    return seen


def test_every_training_step_runs_in_training_mode_after_validation_and_sampling(project, monkeypatch):
    # A step only switches the model to training mode when it is not already in it; validation
    # and sampling between the stretches leave it in eval mode, and dropout must come back.
    steps, validations = _modes_after(monkeypatch, 'train_step'), _modes_after(monkeypatch, 'validate')
    train({**TINY, 'text': 'corpus.txt', 'epochs': 2, 'inner_iterations': 2, 'sample_tokens': 2,
           'transformer.dropout': 0.1}, name='modes', writers='sqlite')
    assert len(validations) == 4 and all(v == {False} for v in validations)
    assert len(steps) > 8 and all(m == {True} for m in steps)
