"""Weight-decay groups of the optimizer that `Configs` builds (its schedule: test_lr_schedule)."""

import pytest
import torch

from gpt_experiment import UserError
from gpt_experiment.optimizer import AdamWarmupCosineDecay, decay_groups, linear_weights


# The nn.Linear weights of a one-layer GPT, and nothing else.
ONE_LAYER_DECAY = {
    'encoder.layers.0.self_attn.query.linear.weight',
    'encoder.layers.0.self_attn.key.linear.weight',
    'encoder.layers.0.self_attn.value.linear.weight',
    'encoder.layers.0.self_attn.output.weight',
    'encoder.layers.0.feed_forward.layer1.weight',
    'encoder.layers.0.feed_forward.layer2.weight',
    'generator.projection.weight',
}


def test_exactly_the_linear_weights_decay(tiny_configs):
    model = tiny_configs().model
    assert set(linear_weights(model)) == ONE_LAYER_DECAY


@pytest.mark.parametrize('src_embed', ['fixed_pos', 'learned_pos'])
def test_every_parameter_in_exactly_one_group(tiny_configs, src_embed):
    model = tiny_configs(**{'transformer.src_embed': src_embed}).model
    decay, no_decay = decay_groups(model, weight_decay=0.1)
    assert decay['weight_decay'] == 0.1
    assert no_decay['weight_decay'] == 0.0

    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = [names[id(p)] for p in decay['params']]
    no_decay_names = [names[id(p)] for p in no_decay['params']]
    assert set(decay_names) == ONE_LAYER_DECAY
    # no parameter twice, none left out
    assert len(decay_names) + len(no_decay_names) == len(set(decay_names) | set(no_decay_names))
    assert set(decay_names) | set(no_decay_names) == set(names.values())

    expected_no_decay = {'src_embed.linear.weight', 'encoder.norm.weight', 'encoder.norm.bias',
                         'generator.projection.bias', 'encoder.layers.0.feed_forward.layer1.bias',
                         'encoder.layers.0.norm_self_attn.weight', 'encoder.layers.0.norm_ff.bias'}
    if src_embed == 'learned_pos':
        expected_no_decay.add('src_embed.positional_encodings')
    assert expected_no_decay <= set(no_decay_names)
    assert not any(n.endswith('.bias') for n in decay_names)


def test_optimizer_groups_and_hyper_parameters(tiny_configs):
    conf = tiny_configs()
    opt = conf.optimizer
    assert isinstance(opt, AdamWarmupCosineDecay)
    decay, no_decay = opt.param_groups
    names = {id(p): n for n, p in conf.model.named_parameters()}
    assert {names[id(p)] for p in decay['params']} == ONE_LAYER_DECAY
    assert len(decay['params']) + len(no_decay['params']) == len(names)
    assert decay['weight_decay'] == pytest.approx(0.1)
    assert no_decay['weight_decay'] == 0.0
    for group in opt.param_groups:
        assert group['betas'] == (0.9, 0.95)
        assert group['eps'] == 1e-8
        assert group['lr'] == pytest.approx(6e-4)
    # decoupled: the decay is applied to the weights, not added to the gradient
    assert all(group['decoupled_weight_decay'] for group in opt.param_groups)


def test_weight_decay_and_learning_rate_overrides(tiny_configs):
    opt = tiny_configs(weight_decay=0.05, learning_rate=3e-3).optimizer
    decay, no_decay = opt.param_groups
    assert decay['weight_decay'] == pytest.approx(0.05)
    assert no_decay['weight_decay'] == 0.0
    assert decay['lr'] == no_decay['lr'] == pytest.approx(3e-3)


def test_nested_optimizer_overrides_win(tiny_configs):
    opt = tiny_configs(**{'optimizer.learning_rate': '1e-3', 'optimizer.betas': '(0.8, 0.99)'}).optimizer
    assert all(g['lr'] == pytest.approx(1e-3) and g['betas'] == (0.8, 0.99) for g in opt.param_groups)
    # labml_nn's schedule keys are not read (the warm-up is `warmup_steps` tokens): setting one is refused
    with pytest.raises(UserError, match='optimizer.warmup is labml.s but this trainer does not use it'):
        tiny_configs(**{'optimizer.warmup': '5'})


def test_only_decay_group_shrinks_on_a_zero_gradient_step(tiny_configs):
    conf = tiny_configs()
    model, opt = conf.model, conf.optimizer
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    factor = 1 - 6e-4 * 0.1
    for n, p in model.named_parameters():
        if n in ONE_LAYER_DECAY:
            torch.testing.assert_close(p.detach(), before[n] * factor, rtol=1e-6, atol=0)
            assert not torch.equal(p.detach(), before[n])
        else:
            assert torch.equal(p.detach(), before[n]), f'{n} changed without a gradient'


def test_muon_takes_the_hidden_matrices_and_adam_the_rest(tiny_configs):
    conf = tiny_configs(**{'optimizer.optimizer': 'Muon', 'transformer.n_layers': 2, 'learning_rate': 3e-3,
                           'warmup_steps': 256})
    opt, names = conf.optimizer, {id(p): n for n, p in conf.model.named_parameters()}
    muon = {names[id(p)] for g in opt.muon.param_groups for p in g['params']}
    adam = {names[id(p)] for g in opt.adam.param_groups for p in g['params']}
    assert muon == {n for n, p in conf.model.named_parameters() if n.startswith('encoder.layers.') and p.dim() == 2}
    assert not muon & adam and muon | adam == set(names.values())
    assert {'src_embed.linear.weight', 'generator.projection.weight', 'encoder.norm.weight'} <= adam
    # the schedule gives both their rates: Muon's a multiple of Adam's
    opt.set_lr(1e-3)
    assert opt.param_groups[0]['lr'] == 1e-3 and opt.muon.param_groups[0]['lr'] == 2e-3
    # and it trains
    for x, y, _ in list(conf.train_loader.epoch(0))[:20]:
        conf.train_step(x, y)
    losses = [loss.item() for _, loss in conf._metrics.losses]
    assert sum(losses[-5:]) / 5 < losses[0] - 0.2
