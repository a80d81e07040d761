"""Config keys, override parsing and YAML presets (gpt_experiment.overrides)."""

import pytest

from gpt_experiment import Configs, UserError
from gpt_experiment.overrides import check_overrides, config_keys, describe, load_yaml, overrides_from_args

from conftest import REPO_ROOT


@pytest.fixture(scope='module')
def keys():
    return config_keys(Configs)


def test_config_keys_include_nested_configs(keys):
    for key in ('batch_size', 'seq_len', 'learning_rate', 'warmup_steps', 'tokenizer', 'text',
                'transformer.n_layers', 'transformer.d_model', 'transformer.ffn.d_ff',
                'optimizer.learning_rate', 'optimizer.betas'):
        assert key in keys, key
    assert keys['transformer.n_layers'].kind == 'int'
    assert keys['transformer.n_layers'].default == 6
    assert keys['learning_rate'].kind == 'float'
    assert keys['learning_rate'].default == pytest.approx(6e-4)
    assert keys['tokenizer'].default == 'character'
    assert 'character' in keys['tokenizer'].options
    assert {'tiny_shakespeare', 'file'} <= set(keys['text'].options)
    assert {'fixed_pos', 'learned_pos'} <= set(keys['transformer.src_embed'].options)


def test_only_working_tokenizers_and_loaders_are_offered(keys):
    # labml_nn's basic_english needs torchtext; its loaders read a TextDataset
    assert keys['tokenizer'].options == ['character', 'bpe']
    assert keys['train_loader'].options == keys['valid_loader'].options == ['shuffled_windows']
    with pytest.raises(UserError, match="tokenizer='basic_english' is not a registered option"):
        check_overrides(Configs, {'tokenizer': 'basic_english'})


@pytest.mark.parametrize('key, value, expected', [
    ('transformer.n_layers', '2', 2),
    ('epochs', '+3', 3),
    ('batch_size', '1e3', 1000),
    ('batch_size', 16, 16),
    ('learning_rate', '1e-3', 0.001),
    ('learning_rate', 1, 1.0),
    ('weight_decay', '0', 0.0),
    ('is_save_models', 'false', False),
    ('is_save_models', 'No', False),
    ('is_log_model_activations', 'true', True),
    ('is_log_model_activations', 'yes', True),
    ('is_log_model_activations', True, True),
    ('tokenizer', 'character', 'character'),
    ('transformer.src_embed', 'learned_pos', 'learned_pos'),
    ('prompt', 'Once upon', 'Once upon'),
    ('prompt', 42, '42'),
    ('optimizer.betas', '[0.9, 0.99]', (0.9, 0.99)),
    ('optimizer.betas', [0.8, 0.9], (0.8, 0.9)),
    # as Python writes a tuple
    ('optimizer.betas', '(0.9, 0.95)', (0.9, 0.95)),
    # YAML's booleans for an option whose names are true and false
    ('compile', True, 'true'),
    ('compile', 'false', 'false'),
])
def test_values_are_parsed_to_the_declared_type(key, value, expected):
    parsed = check_overrides(Configs, {key: value})
    assert parsed == {key: expected}
    assert type(parsed[key]) is type(expected)


def test_text_path_becomes_text_file():
    assert check_overrides(Configs, {'text': 'corpus.txt'}) == {'text': 'file', 'text_file': 'corpus.txt'}
    assert check_overrides(Configs, {'text': 'tiny_shakespeare'}) == {'text': 'tiny_shakespeare'}
    assert check_overrides(Configs, {'valid_text': 'v.txt'}) == {'valid_text_file': 'v.txt'}


def test_nested_dicts_are_flattened():
    parsed = check_overrides(Configs, {'transformer': {'n_layers': '3', 'ffn': {'d_ff': 128}},
                                       'optimizer': {'learning_rate': '2e-3'}, 'epochs': 1})
    assert parsed == {'transformer.n_layers': 3, 'transformer.ffn.d_ff': 128,
                      'optimizer.learning_rate': 0.002, 'epochs': 1}


@pytest.mark.parametrize('overrides, fragments', [
    ({'batchsize': 4}, ["unknown config key 'batchsize'", "'batch_size'"]),
    ({'transformer.n_layer': 4}, ["'transformer.n_layers'"]),
    ({'batch_size': 'abc'}, ['batch_size', 'int', "'abc'"]),
    ({'epochs': '1.5'}, ['epochs', 'int', "'1.5'"]),
    ({'epochs': True}, ['epochs', 'int']),
    ({'learning_rate': 'fast'}, ['learning_rate', 'float']),
    ({'is_save_models': 'maybe'}, ['is_save_models', 'bool']),
    ({'optimizer.betas': '[0.9]'}, ['optimizer.betas']),
    ({'tokenizer': 'nope'}, ["tokenizer='nope'", 'not a registered option', 'character']),
    ({'transformer.src_embed': 'rotary'}, ['learned_pos', 'fixed_pos']),
    ({'model': 'x'}, ['model']),
    ({3: 'x'}, ['config keys must be strings']),
])
def test_bad_overrides_are_user_errors(overrides, fragments):
    with pytest.raises(UserError) as e:
        check_overrides(Configs, overrides)
    message = str(e.value)
    assert '\n' not in message
    for fragment in fragments:
        assert fragment in message


def test_presets_then_arguments_later_wins(tmp_path):
    preset = tmp_path / 'preset.yaml'
    preset.write_text('epochs: 5\nseq_len: 64\ntransformer:\n  n_layers: 2\n  ffn:\n    d_ff: 128\n', encoding='utf-8')
    other = tmp_path / 'other.yml'
    other.write_text('seq_len: 32\n', encoding='utf-8')

    assert overrides_from_args([str(preset), 'epochs=3']) == {
        'epochs': '3', 'seq_len': 64, 'transformer.n_layers': 2, 'transformer.ffn.d_ff': 128}
    assert overrides_from_args(['epochs=3', str(preset), str(other)]) == {
        'epochs': 5, 'seq_len': 32, 'transformer.n_layers': 2, 'transformer.ffn.d_ff': 128}
    # the value keeps any further '='
    assert overrides_from_args(['prompt=a=b']) == {'prompt': 'a=b'}
    parsed = check_overrides(Configs, overrides_from_args([str(preset), 'epochs=3', 'transformer.n_layers=4']))
    assert parsed['epochs'] == 3 and parsed['transformer.n_layers'] == 4 and parsed['seq_len'] == 64


def test_empty_preset_is_no_overrides(tmp_path):
    empty = tmp_path / 'empty.yaml'
    empty.write_text('# nothing here\n', encoding='utf-8')
    assert overrides_from_args([str(empty)]) == {}


@pytest.mark.parametrize('content, fragment', [
    ('a: [1, 2\n  b: : :\n', 'is not valid YAML'),
    ('- epochs\n- 3\n', 'must be a mapping'),
    ('just a string\n', 'must be a mapping'),
])
def test_bad_presets_are_user_errors(tmp_path, content, fragment):
    path = tmp_path / 'bad.yaml'
    path.write_text(content, encoding='utf-8')
    with pytest.raises(UserError) as e:
        overrides_from_args([str(path)])
    assert fragment in str(e.value)
    assert str(path) in str(e.value)
    assert '\n' not in str(e.value)


def test_bad_arguments_are_user_errors(tmp_path):
    with pytest.raises(UserError, match='config file not found'):
        overrides_from_args([str(tmp_path / 'missing.yaml')])
    with pytest.raises(UserError, match='missing key'):
        overrides_from_args(['=3'])
    with pytest.raises(UserError, match='neither a YAML preset nor key=value'):
        overrides_from_args(['epochs'])


def test_repository_presets_parse(keys, tmp_path):
    """Every preset in configs/ (and one written here, in the same nested style) is valid."""
    written = tmp_path / 'small.yaml'
    written.write_text('seq_len: 64\ntransformer:\n  d_model: 64\n  n_heads: 4\n  src_embed: learned_pos\n'
                       '  ffn:\n    d_ff: 256\nlearning_rate: 1.0e-3\nwarmup_steps: 4096\n', encoding='utf-8')
    presets = sorted((REPO_ROOT / 'configs').glob('*.y*ml')) + [written]
    for preset in presets:
        parsed = check_overrides(Configs, load_yaml(str(preset)))
        assert parsed, f'{preset.name} sets nothing'
        assert set(parsed) <= set(keys), preset.name
        if preset.name == 'labml_gpt.yaml':
            # "the labml GPT recipe, spelled out": the defaults of Configs
            for key, value in parsed.items():
                assert keys[key].default == value, f'{key}: preset {value!r}, default {keys[key].default!r}'
    assert check_overrides(Configs, load_yaml(str(written))) == {
        'seq_len': 64, 'transformer.d_model': 64, 'transformer.n_heads': 4, 'transformer.src_embed': 'learned_pos',
        'transformer.ffn.d_ff': 256, 'learning_rate': 1e-3, 'warmup_steps': 4096}


def test_describe_shows_the_given_values_over_the_defaults():
    lines = {line.split()[0]: line for line in describe({'batch_size': 16}).splitlines() if line[2] != ' '}
    assert lines['batch_size'].split()[1:] == ['int', '16']
    assert lines['transformer.n_layers'].split()[1:] == ['int', '6']
    assert 'learned_pos' in lines['transformer.src_embed']


def test_the_key_table_is_what_configs_declares():
    """`--help` and the command line read `keys.json`; it must say what `Configs` says."""
    from gpt_experiment.overrides import key_table, keys_of_configs
    assert key_table() == keys_of_configs(), \
        'keys.json is stale: python -c "from gpt_experiment import overrides; overrides.write_key_table()"'
