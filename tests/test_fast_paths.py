"""
The fast paths compute what the stock ones compute: `sdpa` attention gives labml_nn's logits
on the same weights, the foreach optimizer follows labml_nn's `AdamWarmupCosineDecay`, and
bfloat16 autocast trains.
"""

import copy

import pytest
import torch

from labml_nn.optimizers import WeightDecay
from labml_nn.optimizers.adam_warmup_cosine_decay import AdamWarmupCosineDecay

from gpt_experiment.optimizer import ForeachAdamWarmupCosineDecay, parameter_groups
from gpt_experiment.train import main

from conftest import TINY, checkpoint_steps, make_configs, run_dirs


def test_sdpa_attention_matches_labml_mha_logits(tiny_configs):
    stock = tiny_configs(**{'transformer.n_layers': 2, 'transformer.encoder_attn': 'mha'}).model
    fast = tiny_configs(**{'transformer.n_layers': 2, 'transformer.encoder_attn': 'sdpa'}).model
    assert type(fast.encoder.layers[0].self_attn).__name__ == 'SDPAttention'
    # Same parameter names and shapes: a checkpoint of one loads into the other.
    fast.load_state_dict(stock.state_dict())
    stock.eval(), fast.eval()
    x = torch.randint(0, 20, (16, 3))
    with torch.no_grad():
        torch.testing.assert_close(fast(x)[0], stock(x)[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize('decouple', [True, False])
def test_foreach_optimizer_follows_labml_adam_warmup_cosine_decay(decouple):
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Embedding(11, 16), torch.nn.Linear(16, 32), torch.nn.LayerNorm(32),
                            torch.nn.Linear(32, 11))
    b = copy.deepcopy(a)
    kw = dict(lr=6e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=WeightDecay(0.1, decouple), warmup=4, total_steps=10)
    opt_a = AdamWarmupCosineDecay(parameter_groups(a, 0.1), **kw)
    opt_b = ForeachAdamWarmupCosineDecay(parameter_groups(b, 0.1), **kw)
    for _ in range(10):
        x = torch.randint(0, 11, (8,))
        for model, opt in ((a, opt_a), (b, opt_b)):
            model(x).logsumexp(-1).sum().backward()
            opt.step()
            opt.zero_grad()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pb, pa, rtol=1e-6, atol=0, msg=name)
    # The state has the same layout, so checkpoints of either optimizer load into the other.
    opt_a.load_state_dict(opt_b.state_dict())


def test_bfloat16_and_foreach_options_train(project):
    conf = main({**TINY, 'text': 'corpus.txt', 'epochs': 1, 'inner_iterations': 1, 'dtype': 'bfloat16',
                 'optimizer.optimizer': 'ForeachAdamWarmupCosineDecay', 'transformer.encoder_attn': 'sdpa'},
                name='fast')
    assert conf.dtype == torch.bfloat16
    assert isinstance(conf.optimizer, ForeachAdamWarmupCosineDecay)
    assert checkpoint_steps(run_dirs(project, 'fast')[0])


def test_top_level_d_model_sets_the_width_unless_transformer_d_model_is_given(project):
    overrides = {k: v for k, v in TINY.items() if k != 'transformer.d_model'}
    conf = make_configs({'text': 'corpus.txt', **overrides, 'd_model': 48})
    assert conf.model.generator.projection.in_features == 48
    conf = make_configs({'text': 'corpus.txt', **overrides, 'd_model': 48, 'transformer.d_model': 40})
    assert conf.model.generator.projection.in_features == 40


def test_two_runs_in_one_process_each_count_steps_from_zero(project):
    overrides = {**TINY, 'text': 'corpus.txt', 'epochs': 1, 'inner_iterations': 1}
    main(dict(overrides), name='first')
    main(dict(overrides), name='second')
    first, second = (checkpoint_steps(run_dirs(project, n)[0]) for n in ('first', 'second'))
    assert first == second
