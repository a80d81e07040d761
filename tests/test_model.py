"""The GPT model that `Configs` builds: initialisation, seeding and the causal mask."""

import torch
from torch import nn

from conftest import make_configs


def _big_enough_configs(**extra):
    # Wide enough that every weight matrix has thousands of entries for the statistics.
    return make_configs({'text': 'corpus.txt', 'transformer.d_model': 128, 'transformer.n_heads': 4,
                         'transformer.n_layers': 2, 'transformer.ffn.d_ff': 256, 'seq_len': 16,
                         'batch_size': 8, **extra})


def test_linear_and_embedding_weights_are_normal_0_02(project):
    model = _big_enough_configs().model
    weights = [(name, m.weight) for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))]
    # 2 layers x (q, k, v, output, ffn1, ffn2) + generator, and the token embedding
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 13
    assert sum(isinstance(m, nn.Embedding) for m in model.modules()) == 1
    for name, w in weights:
        w = w.detach().float()
        assert abs(w.std().item() - 0.02) < 0.002, f'{name}.weight std is {w.std().item():.4f}, not 0.02'
        assert abs(w.mean().item()) < 0.002, f'{name}.weight mean is {w.mean().item():.4f}, not 0'


def test_linear_biases_are_zero_and_layer_norms_are_identity(project):
    model = _big_enough_configs().model
    biases = [(n, m.bias) for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.bias is not None]
    assert biases, 'expected linear layers with biases'
    for name, b in biases:
        assert torch.count_nonzero(b).item() == 0, f'{name}.bias is not zero'
    norms = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)]
    # two per layer and the final norm
    assert len(norms) == 5
    for name, m in norms:
        assert torch.equal(m.weight, torch.ones_like(m.weight)), f'{name}.weight is not 1'
        assert torch.equal(m.bias, torch.zeros_like(m.bias)), f'{name}.bias is not 0'


def test_learned_positional_encodings_are_not_reinitialised(project):
    model = _big_enough_configs(**{'transformer.src_embed': 'learned_pos'}).model
    # labml_nn starts learned positions at zero; init_weights leaves plain parameters alone.
    pe = model.src_embed.positional_encodings
    assert torch.count_nonzero(pe).item() == 0


def test_same_seed_same_weights_different_seed_different_weights(tiny_configs):
    a = tiny_configs(seed=3).model.state_dict()
    b = tiny_configs(seed=3).model.state_dict()
    c = tiny_configs(seed=4).model.state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_logits_shape_and_causality(tiny_configs):
    conf = tiny_configs()
    model = conf.model.eval()
    torch.manual_seed(0)
    x = torch.randint(0, conf.n_tokens, (conf.seq_len, 3))
    with torch.no_grad():
        logits, state = model(x)
    # sequence first: [seq_len, batch_size, n_tokens]
    assert logits.shape == (conf.seq_len, 3, conf.n_tokens)
    assert state is None
    # Changing the last half of the sequence leaves the logits of the first half unchanged...
    y = x.clone()
    half = conf.seq_len // 2
    y[half:] = (y[half:] + 1) % conf.n_tokens
    with torch.no_grad():
        logits_y, _ = model(y)
    torch.testing.assert_close(logits_y[:half], logits[:half], rtol=0, atol=1e-6)
    # ...but not of the positions that see the change.
    assert not torch.allclose(logits_y[half:], logits[half:])
    # A shorter input works too (the cached causal mask follows the length).
    with torch.no_grad():
        short, _ = model(x[:5])
    torch.testing.assert_close(short, logits[:5], rtol=0, atol=1e-5)
