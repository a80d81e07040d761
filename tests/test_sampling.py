"""Greedy sampling with a cropped context, and prompt checks (gpt_experiment.sampling)."""

import pytest
import torch
from torch import nn

from gpt_experiment import UserError
from gpt_experiment.checks import check_configs
from gpt_experiment.sampling import check_prompt, greedy_continuation

from conftest import PARAGRAPH


def _model_with_short_position_table(conf):
    """The configured model, its learned positional table cut to `seq_len` rows (as a GPT-1 style model has)."""
    model = conf.model
    pe = model.src_embed.positional_encodings
    model.src_embed.positional_encodings = nn.Parameter(pe.detach()[:conf.seq_len].clone())
    # random positions, so that the position of each token matters to the output
    torch.manual_seed(0)
    nn.init.normal_(model.src_embed.positional_encodings, std=0.5)
    return model


def test_prompt_longer_than_seq_len_is_cropped(tiny_configs):
    conf = tiny_configs(**{'transformer.src_embed': 'learned_pos'})
    model = _model_with_short_position_table(conf)
    prompt = PARAGRAPH[:3 * conf.seq_len + 5]
    ids = conf.text.text_to_i(prompt)
    # the whole prompt does not fit the position table
    with pytest.raises(ValueError, match=f'positions up to {len(ids)} but the table has {conf.seq_len}'):
        model(ids.unsqueeze(-1))

    model.train()
    out = list(greedy_continuation(model, conf.text.tokenizer, prompt, n_tokens=6, seq_len=conf.seq_len,
                                   separator='', device=torch.device('cpu')))
    assert model.training, 'sampling must restore training mode'
    assert len(out) == 6
    assert all(t in conf.text.tokenizer.stoi for t in out)

    # each token is the most likely one after the last seq_len tokens
    model.eval()
    context = ids
    with torch.no_grad():
        for token in out:
            logits, _ = model(context[-conf.seq_len:].unsqueeze(-1))
            expected = conf.text.tokenizer.itos[logits[-1, 0].argmax().item()]
            assert token == expected
            context = torch.cat([context, torch.tensor([conf.text.tokenizer.stoi[token]])])


def test_sampling_keeps_eval_mode_and_adds_separator(tiny_configs):
    conf = tiny_configs()
    model = conf.model.eval()
    out = list(greedy_continuation(model, conf.text.tokenizer, 'It is ', n_tokens=4, seq_len=conf.seq_len,
                                   separator='|', device=torch.device('cpu')))
    assert not model.training
    assert len(out) == 4
    assert all(t.startswith('|') and t[1:] in conf.text.tokenizer.stoi for t in out)


def test_check_prompt_names_missing_characters(tiny_configs):
    text = tiny_configs().text.tokenizer
    check_prompt('It is a lazy day', text)  # every character is in the corpus
    with pytest.raises(UserError) as e:
        check_prompt('Zz', text)
    message = str(e.value)
    # the corpus has 'z' ("lazy") but no 'Z'
    assert "'Z'" in message and "'z'" not in message.split(':', 1)[1]
    assert "'Zz'" in message
    with pytest.raises(UserError) as e:
        check_prompt('Q? Zebra!', text)
    for missing in ("'Q'", "'Z'", "'?'", "'!'"):
        assert missing in str(e.value)
    with pytest.raises(UserError, match='prompt is empty'):
        check_prompt('', text)


def test_check_configs_refuses_a_prompt_outside_the_vocabulary(tiny_configs):
    check_configs(tiny_configs(prompt='the orchard'))
    with pytest.raises(UserError, match="'Z'"):
        check_configs(tiny_configs(prompt='Zz'))
