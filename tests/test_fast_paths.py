"""
The fast paths compute what the stock ones compute: `sdpa` attention gives labml_nn's logits
on the same weights, in either layout; the foreach and fused optimizers follow labml_nn's
`AdamWarmupCosineDecay`, with clipping folded into their step; and bfloat16 autocast trains.
"""

import copy

import pytest
import torch
import yaml

from labml_nn.optimizers import WeightDecay
from labml_nn.optimizers.adam_warmup_cosine_decay import AdamWarmupCosineDecay

from labml_nn.transformers.mha import MultiHeadAttention

from gpt_experiment import UserError, optimizer as optimizers
from gpt_experiment.attention import SDPAttention, batch_first
from gpt_experiment.optimizer import (FusedAdamWarmupCosineDecay, ForeachAdamWarmupCosineDecay, clip_grad_norm_,
                                      decay_groups)
from gpt_experiment import train

from conftest import TINY, checkpoint_steps, make_configs, run_dirs


# Each of labml_nn's embeddings: the batch-first encoder embeds the tokens itself for the first two.
@pytest.mark.parametrize('src_embed', ['learned_pos', 'fixed_pos', 'no_pos'])
def test_sdpa_attention_matches_labml_mha_logits(tiny_configs, src_embed):
    stock = tiny_configs(**{'transformer.n_layers': 2, 'transformer.encoder_attn': 'mha',
                            'transformer.src_embed': src_embed}).model
    fast = tiny_configs(**{'transformer.n_layers': 2, 'transformer.encoder_attn': 'sdpa',
                           'transformer.src_embed': src_embed}).model
    assert type(fast.encoder.layers[0].self_attn).__name__ == 'SDPAttention'
    with torch.no_grad():
        for name, p in stock.named_parameters():
            if 'positional' in name:
                # Learned positions start at zero, where a wrong layout would not show.
                p.normal_()
    # Same parameter names and shapes: a checkpoint of one loads into the other.
    fast.load_state_dict(stock.state_dict())
    stock.eval(), fast.eval()
    x = torch.randint(0, 20, (16, 3))
    with torch.no_grad():
        torch.testing.assert_close(fast(x)[0], stock(x)[0], rtol=0, atol=1e-5)


def test_sdpa_attention_in_both_layouts_with_a_padding_mask():
    torch.manual_seed(0)
    stock = MultiHeadAttention(4, 32, dropout_prob=0.0).eval()
    fast = SDPAttention(4, 32, dropout_prob=0.0).eval()
    fast.load_state_dict(stock.state_dict())
    x = torch.randn(6, 3, 32)
    # Not causal: batch element 1 cannot see the last two positions.
    mask = torch.ones(6, 6, 3, dtype=torch.bool)
    mask[:, 4:, 1] = False
    with torch.no_grad():
        expected = stock(query=x, key=x, value=x, mask=mask)
        torch.testing.assert_close(fast(query=x, key=x, value=x, mask=mask), expected, rtol=0, atol=1e-5)
        with batch_first():
            xb = x.transpose(0, 1)
            torch.testing.assert_close(fast(query=xb, key=xb, value=xb, mask=mask), expected.transpose(0, 1),
                                       rtol=0, atol=1e-5)
        # Cross-attention (keys from another tensor) takes the three projections one by one.
        y = torch.randn(6, 3, 32)
        torch.testing.assert_close(fast(query=x, key=y, value=y, mask=mask), stock(query=x, key=y, value=y, mask=mask),
                                   rtol=0, atol=1e-5)


def test_the_sdpa_gpt_is_one_graph_for_torch_compile(tiny_configs):
    """
    `compile=true` pays off only if `torch.compile` sees the whole forward pass as one graph:
    a graph break (the causal-mask check reading the mask's values was one) splits it.
    """
    model = tiny_configs(**{'transformer.n_layers': 2, 'transformer.encoder_attn': 'sdpa'}).model
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(torch.randint(0, 20, (16, 3)))
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1


def test_sampling_between_compiled_steps_does_not_recompile(tiny_configs):
    """Sampling calls the plain module on other lengths; the compiled graph must not depend on that."""
    from torch._dynamo.testing import CompileCounter
    model = tiny_configs(**{'transformer.encoder_attn': 'sdpa'}).model
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, dynamic=False)
    x = torch.randint(0, 20, (16, 3))
    expected = compiled(x)[0]
    model(x[:5])
    torch.testing.assert_close(compiled(x)[0], expected)
    assert counter.frame_count == 1


def test_gpt_runs_batch_first_only_when_every_layer_is_sdpa(tiny_configs):
    assert tiny_configs(**{'transformer.encoder_attn': 'sdpa'}).model.batch_first
    assert not tiny_configs(**{'transformer.encoder_attn': 'mha'}).model.batch_first


def _train_pair(optimizer_class, decouple: bool, max_norm=None, steps=10, eps=1e-8, absolute=False,
                stock_class=AdamWarmupCosineDecay, device='cpu'):
    """
    labml_nn's optimizer (and PyTorch's clipping) on the CPU against `optimizer_class` (on
    `device`) from the same start.
    """
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Embedding(11, 16), torch.nn.Linear(16, 32), torch.nn.LayerNorm(32),
                            torch.nn.Linear(32, 11))
    b = copy.deepcopy(a).to(device)
    kw = dict(lr=6e-4, betas=(0.9, 0.95), eps=eps, weight_decay=WeightDecay(0.1, decouple, absolute), warmup=4,
              total_steps=10)
    opt_a = stock_class(decay_groups(a, 0.1), **kw)
    opt_b = optimizer_class(decay_groups(b, 0.1), **kw)
    norms = []
    for _ in range(steps):
        x = torch.randint(0, 11, (8,))
        for model, opt in ((a, opt_a), (b, opt_b)):
            model(x.to(next(model.parameters()).device)).logsumexp(-1).sum().backward()
            if max_norm is not None:
                norms.append(clip_grad_norm_(opt, model.parameters(), max_norm))
            opt.step()
            opt.zero_grad()
    return a, b, opt_a, opt_b, norms


@pytest.mark.parametrize('decouple', [True, False])
def test_foreach_optimizer_follows_labml_adam_warmup_cosine_decay(decouple):
    a, b, opt_a, opt_b, _ = _train_pair(ForeachAdamWarmupCosineDecay, decouple)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pb, pa, rtol=1e-6, atol=0, msg=name)
    # The state has the same layout, so checkpoints of either optimizer load into the other.
    opt_a.load_state_dict(opt_b.state_dict())


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((b - a).norm() / a.norm()).item()


# A large epsilon too, where how it enters the denominator shows.
@pytest.mark.parametrize('decouple,eps', [(True, 1e-8), (False, 1e-8), (True, 1e-4)])
def test_fused_optimizer_follows_labml_adam_warmup_cosine_decay(decouple, eps):
    """
    The fused kernel rounds differently (it interpolates the first moment, and divides
    before adding epsilon), so it agrees with labml_nn to rounding rather than bit for bit:
    within 1e-6 relative per parameter tensor, and within 2e-8 for every element.
    """
    a, b, opt_a, opt_b, _ = _train_pair(FusedAdamWarmupCosineDecay, decouple, eps=eps)
    _assert_follows(a, b)
    opt_a.load_state_dict(opt_b.state_dict())


def _assert_follows(a, b, rel=1e-6, atol=2e-8):
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert _relative_error(pa, pb) <= rel, name
        torch.testing.assert_close(pb, pa, rtol=rel, atol=atol, msg=name)


def _zero_lr_on_odd_steps(optimizer_class):
    class ZeroOnOddSteps(optimizer_class):
        def get_lr(self, state, group):
            return 0.0 if state['step'] % 2 else super().get_lr(state, group)
    return ZeroOnOddSteps


def test_fused_optimizer_decays_like_labml_with_an_absolute_rate_and_at_a_zero_learning_rate():
    """
    Decoupled decay runs inside the AdamW kernel with its rate divided by the scheduled
    learning rate; an absolute rate, and a step whose learning rate is zero (where it cannot
    be divided), must decay the parameters as labml_nn does.
    """
    a, b, *_ = _train_pair(FusedAdamWarmupCosineDecay, True, absolute=True)
    _assert_follows(a, b)
    a, b, *_ = _train_pair(_zero_lr_on_odd_steps(FusedAdamWarmupCosineDecay), True,
                           stock_class=_zero_lr_on_odd_steps(AdamWarmupCosineDecay))
    _assert_follows(a, b)


@pytest.mark.parametrize('optimizer_class', [ForeachAdamWarmupCosineDecay, FusedAdamWarmupCosineDecay])
def test_clipping_folded_into_the_step_clips_like_pytorch(optimizer_class):
    # A small max norm, so that every step clips.
    a, b, _, _, norms = _train_pair(optimizer_class, True, max_norm=0.05)
    stock_norms, our_norms = norms[0::2], norms[1::2]
    assert min(stock_norms) > 0.05
    torch.testing.assert_close(torch.stack(our_norms), torch.stack(stock_norms), rtol=1e-5, atol=0)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert _relative_error(pa, pb) <= 1e-6, name
    # Clipping changes the result: without it the parameters end elsewhere.
    unclipped, *_ = _train_pair(optimizer_class, True)
    assert any(_relative_error(pa, pu) > 1e-4 for pa, pu in zip(a.parameters(), unclipped.parameters()))


def test_fused_optimizer_on_a_device_without_the_kernel_takes_the_foreach_path(monkeypatch):
    calls = []
    monkeypatch.setattr(optimizers, '_fused_devices', lambda: [])
    monkeypatch.setattr(torch, '_fused_adam_', lambda *args, **kw: calls.append(1))
    monkeypatch.setattr(torch, '_fused_adamw_', lambda *args, **kw: calls.append(1))
    a, b, *_ = _train_pair(FusedAdamWarmupCosineDecay, True)
    assert not calls
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pb, pa, rtol=1e-6, atol=0, msg=name)


def test_bfloat16_and_foreach_options_train(project):
    conf = train({**TINY, 'text': 'corpus.txt', 'epochs': 1, 'inner_iterations': 1, 'dtype': 'bfloat16',
                 'optimizer.optimizer': 'ForeachAdamWarmupCosineDecay', 'transformer.encoder_attn': 'sdpa'},
                name='fast')
    assert conf.dtype == torch.bfloat16
    assert isinstance(conf.optimizer, ForeachAdamWarmupCosineDecay)
    assert checkpoint_steps(run_dirs(project, 'fast')[0])


def test_the_width_is_transformer_d_model_and_the_top_level_key_follows_it(project):
    conf = make_configs({'text': 'corpus.txt', **TINY, 'transformer.d_model': 40})
    assert conf.model.generator.projection.in_features == conf.d_model == 40
    with pytest.raises(UserError, match='d_model is computed by the experiment and cannot be set'):
        make_configs({'text': 'corpus.txt', **TINY, 'd_model': 48})


def test_two_runs_in_one_process_each_count_steps_from_zero(project):
    overrides = {**TINY, 'text': 'corpus.txt', 'epochs': 1, 'inner_iterations': 1}
    train(dict(overrides), name='first')
    train(dict(overrides), name='second')
    first, second = (checkpoint_steps(run_dirs(project, n)[0]) for n in ('first', 'second'))
    assert first == second


def test_dtype_auto_takes_bfloat16_only_where_the_cpu_has_bf16_units(project):
    # The CPU's own flags decide: AVX512-BF16 or AMX multiply bf16 in hardware; without them
    # bf16 is emulated and slower than fp32, and `auto` must not pick it.
    flags = set()
    for line in open('/proc/cpuinfo'):
        if line.startswith('flags'):
            flags = set(line.split(':', 1)[1].split())
            break
    expected = torch.bfloat16 if flags & {'avx512_bf16', 'amx_bf16'} else torch.float32
    conf = train({**TINY, 'text': 'corpus.txt', 'epochs': 1, 'inner_iterations': 1, 'dtype': 'auto'}, name='auto')
    assert conf.dtype == expected
    # the run records what was asked for, and trained in what was taken
    (run,) = run_dirs(project, 'auto')
    recorded = yaml.safe_load((run / 'configs.yaml').read_text())['dtype']
    assert recorded['value'] == 'auto' and recorded['computed'] == str(expected)
    assert checkpoint_steps(run)
