"""GPT-1 options (gpt_experiment.gpt1 and the model options): shape, parameter count, post-LN, tying, decay."""


import pytest
import torch
from torch import nn

from labml import experiment

from gpt_experiment import Configs
from gpt_experiment.checks import parameter_count
from gpt_experiment.overrides import check_overrides, load_yaml
from gpt_experiment.runs import project_path
from gpt_experiment.model import PostLNTransformerLayer
from gpt_experiment.optimizer import decay_groups, linear_weights, matrix_weights

from conftest import REPO_ROOT


def test_gpt1_preset_counts_about_116_5m_parameters(project):
    overrides = check_overrides(Configs, load_yaml(str(REPO_ROOT / 'configs' / 'gpt1.yaml')))
    # GPT-1's vocabulary, set through labml (it is computed from the corpus, and cannot be
    # overridden from outside); the model is built without reading or tokenising any corpus.
    experiment.create(name='gpt1', python_file=project_path(), writers=set())
    conf = Configs()
    experiment.configs(conf, {**overrides, 'n_tokens': 40478})
    model = conf.model
    n = sum(p.numel() for p in model.parameters())
    assert parameter_count(conf) == n
    assert 116_400_000 < n < 116_700_000, f'{n:,} parameters'
    # 512 learned positions, not labml_nn's 5000; tied embeddings; post-LN without a final norm
    assert model.src_embed.positional_encodings.shape[0] == 512
    assert model.generator.projection.weight is model.src_embed.linear.weight
    assert all(isinstance(layer, PostLNTransformerLayer) for layer in model.encoder.layers)
    assert isinstance(model.encoder.norm, nn.Identity)
    assert model.embedding_dropout.p == 0.1


def test_defaults_stay_the_labml_recipe(tiny_configs):
    model = tiny_configs().model
    assert model.generator.projection.weight is not model.src_embed.linear.weight
    assert not isinstance(model.encoder.layers[0], PostLNTransformerLayer)
    assert isinstance(model.encoder.norm, nn.LayerNorm)
    assert model.embedding_dropout.p == 0.0


def test_post_ln_layer_normalises_after_each_residual(tiny_configs):
    conf = tiny_configs(**{'transformer.encoder_layer': 'post_ln'})
    layer = conf.model.encoder.layers[0].eval()
    # inside the GPT, the layer is batch first and its attention causal without a mask
    assert layer.self_attn.batch_first and layer.self_attn.is_causal
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        a = layer.norm_self_attn(x + layer.self_attn(query=x, key=x, value=x, mask=None))
        expected = layer.norm_ff(a + layer.feed_forward(a))
        out = layer(x=x, mask=None)
    torch.testing.assert_close(out, expected)
    # every position comes out normalised: mean 0, variance 1 over the features
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)


def test_tied_embeddings_share_one_trained_matrix(tiny_configs):
    conf = tiny_configs(tie_embeddings=True)
    model = conf.model
    names = [n for n, _ in model.named_parameters()]
    assert 'generator.projection.weight' not in names and 'src_embed.linear.weight' in names
    x = torch.randint(0, conf.n_tokens, (conf.seq_len, 2))
    logits, _ = model(x)
    logits.sum().backward()
    assert model.src_embed.linear.weight.grad is not None


def test_matrices_decay_rule_takes_every_weight_but_biases_and_gains(tiny_configs):
    conf = tiny_configs(**{'transformer.src_embed': 'learned_pos'})
    model = conf.model
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = decay_groups(model, 0.01, matrix_weights)
    decayed = {names[id(p)] for p in decay['params']}
    assert 'src_embed.linear.weight' in decayed and 'src_embed.positional_encodings' in decayed
    assert not any(n.endswith('bias') or 'norm' in n for n in decayed)
    assert {names[id(p)] for p in no_decay['params']} == set(names.values()) - decayed
    linear, _ = decay_groups(model, 0.01, linear_weights)
    assert 'src_embed.linear.weight' not in {names[id(p)] for p in linear['params']}
    # and the option reaches the optimizer
    opt = tiny_configs(weight_decay_params='matrices', weight_decay=0.01,
                       **{'transformer.src_embed': 'learned_pos'}).optimizer
    assert opt.param_groups[0]['weight_decay'] == 0.01
    assert len(opt.param_groups[0]['params']) == len(decay['params'])


@pytest.mark.parametrize('extra', [
    {},
    {'transformer.src_embed': 'learned_pos', 'tie_embeddings': True},
    {'transformer.encoder_layer': 'post_ln', 'transformer.n_layers': 2},
    {'transformer.ffn.glu_variant': 'GEGLU', 'transformer.src_embed': 'no_pos'},
])
def test_the_size_check_counts_the_parameters_the_model_has(tiny_configs, extra):
    # the check that refuses a model too large for the machine counts it without building it
    conf = tiny_configs(**extra)
    assert parameter_count(conf) == sum(p.numel() for p in conf.model.parameters())
