"""
The fast paths compute what the stock ones compute: `sdpa` attention gives labml_nn's logits
on the same weights, in either layout; PyTorch's Adam, with the schedule, follows labml_nn's
`AdamWarmupCosineDecay`; and bfloat16 autocast trains.
"""

import copy
import math
import re

import pytest
import torch
import yaml

from labml_nn.optimizers import WeightDecay
from labml_nn.optimizers.adam_warmup_cosine_decay import AdamWarmupCosineDecay

from labml_nn.transformers.mha import MultiHeadAttention

from gpt_experiment import UserError, optimizer as optimizers
from gpt_experiment.model import Dropout, SDPAttention, keep_mask
from gpt_experiment.optimizer import AdamWarmupCosineToZero, WarmupCosine, decay_groups
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
        fast.batch_first = True
        xb = x.transpose(0, 1)
        torch.testing.assert_close(fast(query=xb, key=xb, value=xb, mask=mask), expected.transpose(0, 1),
                                   rtol=0, atol=1e-5)
        fast.batch_first = False
        # Cross-attention (keys from another tensor) takes the three projections one by one.
        y = torch.randn(6, 3, 32)
        torch.testing.assert_close(fast(query=x, key=y, value=y, mask=mask), stock(query=x, key=y, value=y, mask=mask),
                                   rtol=0, atol=1e-5)


class _FixedMask(torch.nn.Module):
    """A dropout with a given mask, to run labml_nn's attention and ours on the same one."""

    def __init__(self, mask: torch.Tensor, p: float):
        super().__init__()
        self.mask, self.p = mask, p

    def forward(self, x):
        return x * self.mask / (1 - self.p)


def test_sdpa_attention_with_dropout_on_a_cpu_is_labml_mha_with_the_same_mask():
    torch.manual_seed(0)
    p = 0.3
    stock = MultiHeadAttention(4, 32, dropout_prob=p).train()
    fast = SDPAttention(4, 32, dropout_prob=p).train()
    fast.load_state_dict(stock.state_dict())
    x = torch.randn(6, 3, 32, requires_grad=True)
    # one mask over `[batch, heads, query, key]`; labml_nn's scores are `[query, key, batch, heads]`
    mask = torch.rand(3, 4, 6, 6) >= p
    fast.dropout, stock.dropout = _FixedMask(mask, p), _FixedMask(mask.permute(2, 3, 0, 1), p)
    causal = torch.ones(6, 6, dtype=torch.bool).tril().unsqueeze(-1)
    expected = stock(query=x, key=x, value=x, mask=causal)
    got = fast(query=x, key=x, value=x, mask=causal)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # and batch first, causal without a mask, as the GPT runs it
    fast.batch_first = fast.is_causal = True
    xb = x.transpose(0, 1)
    torch.testing.assert_close(fast(query=xb, key=xb, value=xb), expected.transpose(0, 1), rtol=0, atol=1e-5)
    (g,) = torch.autograd.grad(got.sum(), x)
    (g_stock,) = torch.autograd.grad(expected.sum(), x)
    torch.testing.assert_close(g, g_stock, rtol=0, atol=1e-5)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_the_models_dropout_keeps_one_minus_p_and_scales_as_pytorchs(dtype):
    torch.manual_seed(0)
    p = 0.1
    drop = Dropout(p)
    x = torch.rand(1000, 1000, dtype=dtype).add_(0.5).requires_grad_()
    y = drop(x)
    kept = y != 0
    # 10^6 draws: the keep rate is within five standard deviations of 1 - p
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / kept.numel())
    # each kept element is x / (1 - p), to the rounding of x's dtype, and the others are 0
    ulp = torch.finfo(dtype).eps
    torch.testing.assert_close(y, (x.detach().float() * kept / (1 - p)).to(dtype), rtol=ulp, atol=0)
    # the gradient is the same mask and scale
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, (kept / (1 - p)).to(dtype), rtol=ulp, atol=0)
    # in evaluation, or with p = 0, it is the identity; with p = 1, zeros
    assert torch.equal(drop.eval()(x), x) and torch.equal(Dropout(0.0)(x), x)
    assert not Dropout(1.0)(x).any()


@pytest.mark.parametrize('p', [0.1, 1 / 512, 0.5, 1 - 1 / 512])
def test_the_mask_keeps_one_minus_p_even_where_one_byte_cannot_say_it(p):
    # 1/512 is half of one byte's step: decided by the first byte alone, the keep rate would be
    # 255/256 instead of 511/512, about 90 standard deviations away at 4 million draws.
    torch.manual_seed(1)
    keep = keep_mask((2048, 2048), p)
    assert keep.shape == (2048, 2048) and keep.dtype == torch.bool
    assert abs(keep.float().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / keep.numel())


def test_the_masks_follow_pytorchs_random_generator():
    # the same seed, the same masks (so a resumed run draws what the straight run drew) ...
    torch.manual_seed(7)
    first = [keep_mask((64, 64), 0.1) for _ in range(2)]
    torch.manual_seed(7)
    again = [keep_mask((64, 64), 0.1) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    # ... and each mask moves the generator on
    assert not torch.equal(first[0], first[1])


def test_every_dropout_of_the_gpt_is_the_models_own(tiny_configs):
    model = tiny_configs(**{'transformer.dropout': 0.1, 'embedding_dropout': 0.1}).model
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    # the embeddings', and in each layer the attention's, the residuals' and the feed-forward's
    assert len(drops) >= 1 + 3 * len(model.encoder.layers)
    assert all(type(m) is Dropout and m.p == 0.1 for m in drops)


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


def _train_pair(decouple: bool, max_norm=None, steps=10, eps=1e-8, absolute=False, ours=None,
                stock_class=AdamWarmupCosineDecay, device='cpu', zero_lr_on_odd_steps=False):
    """
    labml_nn's optimizer on the CPU against ours (on `device`) with its schedule, from the same
    start, clipped when `max_norm` is given: labml_nn's by PyTorch's `clip_grad_norm_`, ours by
    its own (which, with the fused kernel, leaves the scaling to the step). labml_nn counts its
    schedule in steps; ours counts tokens, here one a step.
    """
    ours = ours or optimizers.AdamWarmupCosineDecay
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Embedding(11, 16), torch.nn.Linear(16, 32), torch.nn.LayerNorm(32),
                            torch.nn.Linear(32, 11))
    b = copy.deepcopy(a).to(device)
    stock = stock_class
    if zero_lr_on_odd_steps:
        class stock(stock_class):
            def get_lr(self, state, group):
                return 0.0 if state['step'] % 2 else super().get_lr(state, group)
    opt_a = stock(decay_groups(a, 0.1), lr=6e-4, betas=(0.9, 0.95), eps=eps,
                  weight_decay=WeightDecay(0.1, decouple, absolute), warmup=4, total_steps=10)
    opt_b = ours(decay_groups(b, 0.1), lr=6e-4, betas=(0.9, 0.95), eps=eps, decouple=decouple, absolute=absolute)
    schedule = WarmupCosine(6e-4, warmup=4, total=10, floor=ours.lr_floor)
    norms = []
    for t in range(1, steps + 1):
        x = torch.randint(0, 11, (8,))
        for model, opt in ((a, opt_a), (b, opt_b)):
            model(x.to(next(model.parameters()).device)).logsumexp(-1).sum().backward()
            if max_norm is not None:
                norms.append(opt.clip_grad_norm_(max_norm) if opt is opt_b
                             else torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
            if opt is opt_b:
                opt.set_lr(0.0 if zero_lr_on_odd_steps and t % 2 else schedule(t))
            opt.step()
            opt.zero_grad()
    return a, b, opt_a, opt_b, norms


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((b - a).norm() / a.norm()).item()


def _assert_follows(a, b, rel=1e-6, atol=2e-8):
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert _relative_error(pa, pb) <= rel, name
        torch.testing.assert_close(pb.cpu(), pa, rtol=rel, atol=atol, msg=name)


# A large epsilon too, where how it enters the denominator shows.
@pytest.mark.parametrize('decouple,eps', [(True, 1e-8), (False, 1e-8), (True, 1e-4)])
def test_pytorch_adam_with_the_schedule_follows_labml_adam_warmup_cosine_decay(decouple, eps):
    """
    PyTorch's fused kernel rounds differently (it interpolates the first moment, and divides
    before adding epsilon), so it agrees with labml_nn to rounding rather than bit for bit:
    within 1e-6 relative per parameter tensor, and within 2e-8 for every element.
    """
    a, b, opt_a, opt_b, _ = _train_pair(decouple, eps=eps)
    assert opt_b.param_groups[0]['fused']
    _assert_follows(a, b)
    # not trivially: the parameters moved
    assert all(_relative_error(pa, p0) > 1e-4 for pa, p0 in zip(a.parameters(), _train_pair(decouple, steps=0)[0].parameters())
               if pa.dim() > 1)


def test_adam_decays_like_labml_with_an_absolute_rate_and_at_a_zero_learning_rate():
    """
    Decoupled decay runs inside PyTorch's AdamW with its rate divided by the scheduled
    learning rate; an absolute rate, and a step whose learning rate is zero (where it cannot
    be divided), must decay the parameters as labml_nn does.
    """
    a, b, *_ = _train_pair(True, absolute=True)
    _assert_follows(a, b)
    a, b, *_ = _train_pair(True, zero_lr_on_odd_steps=True)
    _assert_follows(a, b)


def test_cosine_to_zero_follows_labml_to_its_end():
    class ToZero(AdamWarmupCosineDecay):
        def get_lr(self, state, group):
            return group['lr'] * 0.5 * (1 + math.cos(math.pi * min(1, (state['step'] - 4) / 6))) \
                if state['step'] >= 4 else super().get_lr(state, group)
    a, b, *_ = _train_pair(True, steps=12, ours=AdamWarmupCosineToZero, stock_class=ToZero)
    _assert_follows(a, b)


def test_clipped_steps_follow_labml():
    # A small max norm, so that every step clips.
    a, b, _, _, norms = _train_pair(True, max_norm=0.05)
    stock_norms, our_norms = norms[0::2], norms[1::2]
    assert min(stock_norms) > 0.05
    torch.testing.assert_close(torch.stack(our_norms), torch.stack(stock_norms), rtol=1e-5, atol=0)
    _assert_follows(a, b)
    # Clipping changes the result: without it the parameters end elsewhere.
    unclipped, *_ = _train_pair(True)
    assert any(_relative_error(pa, pu) > 1e-4 for pa, pu in zip(a.parameters(), unclipped.parameters()))


def test_bfloat16_trains(project):
    conf = train({**TINY, 'text': 'corpus.txt', 'epochs': 1, 'inner_iterations': 1, 'dtype': 'bfloat16',
                 'transformer.encoder_attn': 'sdpa'}, name='fast')
    assert conf.dtype == torch.bfloat16
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


@pytest.mark.parametrize('flags, width, expected', [
    (set(), 32, torch.float32),
    (set(), 512, torch.float32),
    # bf16 units, but a model too narrow for bf16 to pay
    ({'avx512f', 'avx512_bf16'}, 32, torch.float32),
    ({'avx512f', 'avx512_bf16'}, 512, torch.bfloat16),
    ({'amx_bf16'}, 256, torch.bfloat16),
    # AVX-512 alone emulates bf16
    ({'avx512f'}, 512, torch.float32),
])
def test_dtype_auto_takes_bfloat16_where_it_pays(tiny_configs, monkeypatch, capsys, flags, width, expected):
    from gpt_experiment import configs
    monkeypatch.setattr(configs, 'cpu_flags', lambda: flags)
    conf = tiny_configs(**{'transformer.d_model': width, 'transformer.n_heads': 2})
    assert conf.dtype == expected
    # the log says which it took, and why
    out = re.sub(r'\x1b\[[0-9;]*m', '', capsys.readouterr().out)
    assert f'dtype=auto: {str(expected)[6:]} (' in out


def test_dtype_auto_is_the_default_and_the_run_records_it(project):
    conf = train({**TINY, 'text': 'corpus.txt', 'epochs': 1, 'inner_iterations': 1}, name='auto')
    # TINY is 32 wide: fp32 whatever this CPU has
    assert conf.dtype == torch.float32
    (run,) = run_dirs(project, 'auto')
    recorded = yaml.safe_load((run / 'configs.yaml').read_text())['dtype']
    assert recorded['computed'] == 'torch.float32'
    assert yaml.safe_load((run / 'configs.yaml').read_text())['compile']['computed'] is False
    assert checkpoint_steps(run)


def test_compile_auto_is_eager_on_a_cpu_and_a_failing_compiler_is_one_line(tiny_configs, monkeypatch, capsys):
    assert tiny_configs().compile is False

    class Broken(torch.nn.Module):
        def __init__(self, model):
            super().__init__()

        def forward(self, x):
            raise RuntimeError('no C compiler found')
    monkeypatch.setattr(torch, 'compile', lambda model, **kwargs: Broken(model))
    x, y, _ = next(tiny_configs().train_loader.epoch(0))
    # compile=true, asked for: the run stops in one line
    with pytest.raises(UserError, match=r'compile=true: torch.compile failed \(RuntimeError: no C compiler found\)'):
        tiny_configs(compile='true').train_step(x, y)
    # compile=auto (here made to compile): one line, and the step trains eagerly, as without compiling
    from gpt_experiment import labml_glue, trainer
    eager, fallback = tiny_configs(compile='false'), tiny_configs(compile='true')
    fallback.model.load_state_dict(eager.model.state_dict())
    monkeypatch.setattr(labml_glue, 'chosen_value', lambda configs, key: 'auto')
    capsys.readouterr()
    eager.train_step(x, y)
    fallback.train_step(x, y)
    assert 'compile=auto: torch.compile failed (RuntimeError: no C compiler found); training eagerly' in \
        capsys.readouterr().out
    assert all(torch.equal(a, b) for a, b in zip(eager.model.parameters(), fallback.model.parameters()))
