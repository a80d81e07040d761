"""
Bad input is a `UserError`: one line `error: ...` on stderr, exit status 2, no traceback and
no run folder. Every case runs in-process (through `train()` and the command line's `run()`);
a handful also run as `python -m gpt_experiment.main` subprocesses.
"""

import os
from pathlib import Path
from typing import List

import pytest

from gpt_experiment import UserError
from gpt_experiment.overrides import overrides_from_args
from gpt_experiment.main import run
from gpt_experiment import train

from conftest import TINY, run_cli, write_project

BASE_ARGS = [f'{k}={v}' for k, v in TINY.items()] + ['text=corpus.txt', 'epochs=1', 'inner_iterations=1']

# The non-UTF-8 file: 20 good bytes, then Latin-1 'é' (0xe9) before a space.
LATIN1_PREFIX = b'It is a fine day at '


def write_bad_inputs(path: Path):
    (path / 'empty.txt').write_bytes(b'')
    (path / 'latin1.txt').write_bytes(LATIN1_PREFIX + 'café au lait\n'.encode('latin-1') * 50)
    (path / 'short.txt').write_text('It is short.', encoding='utf-8')
    (path / 'garbage.yaml').write_text('epochs: [1, 2\n  seq_len: : :\n', encoding='utf-8')
    (path / 'list.yaml').write_text('- epochs\n- seq_len\n', encoding='utf-8')
    (path / 'emptydir').mkdir()
    os.mkfifo(path / 'pipe')
    os.mkfifo(path / 'pipe.yaml')
    # a list that contains itself, and an alias bomb: 9 ** 8 items from eight lines
    (path / 'recursive.yaml').write_text('epochs: &a [1, *a]\n', encoding='utf-8')
    (path / 'bomb.yaml').write_text('a: &a [x, x, x, x, x, x, x, x, x]\n' + ''.join(
        f'{chr(98 + i)}: &{chr(98 + i)} [{", ".join([f"*{chr(97 + i)}"] * 9)}]\n' for i in range(8)), encoding='utf-8')
    # an alias of a scalar is fine
    (path / 'scalar_alias.yaml').write_text('seq_len: &n 16\nbatch_size: *n\n', encoding='utf-8')


# (id, arguments after BASE_ARGS, fragments the one-line message must contain)
CASES = [
    ('unknown-key', ['batchsize=4'], ["unknown config key 'batchsize'", "did you mean 'batch_size'"]),
    ('unknown-nested-key', ['transformer.n_layer=2'], ["'transformer.n_layers'"]),
    ('not-an-int', ['batch_size=abc'], ['batch_size expects int', "'abc'"]),
    ('float-for-int', ['epochs=1.5'], ['epochs expects int', "'1.5'"]),
    ('not-a-float', ['learning_rate=fast'], ['learning_rate expects float']),
    ('heads-do-not-divide', ['transformer.d_model=30', 'transformer.n_heads=4'],
     ['transformer.d_model=30 is not divisible by transformer.n_heads=4']),
    ('zero-seq-len', ['seq_len=0'], ['seq_len must be positive, got 0']),
    ('negative-layers', ['transformer.n_layers=-1'], ['transformer.n_layers must be positive, got -1']),
    ('zero-batch', ['batch_size=0'], ['batch_size must be positive']),
    ('zero-epochs', ['epochs=0'], ['epochs must be positive']),
    ('dropout-1', ['transformer.dropout=1'], ['transformer.dropout must be in [0, 1)']),
    ('missing-file', ['text=missing.txt'], ['corpus not found', 'missing.txt']),
    ('empty-file', ['text=empty.txt'], ['corpus is empty', 'empty.txt']),
    ('empty-folder', ['text=emptydir'], ['no .txt files', 'emptydir']),
    ('missing-valid-file', ['valid_text=nowhere.txt'], ['corpus not found', 'nowhere.txt']),
    ('non-utf8', ['text=latin1.txt'], ['latin1.txt', 'not UTF-8', f'offset {len(LATIN1_PREFIX) + 3}', '0xe9']),
    ('too-short', ['text=short.txt'], ['short.txt', 'seq_len=16 needs at least 17']),
    ('too-short-for-seq-len', ['seq_len=5000'], ['seq_len=5000 needs at least 5001']),
    ('seq-len-past-the-positions', ['seq_len=100000'], ['seq_len must be at most 5,000']),
    ('garbage-yaml', ['garbage.yaml'], ['garbage.yaml is not valid YAML']),
    ('yaml-list', ['list.yaml'], ['list.yaml must be a mapping of config keys to values, not a list']),
    ('missing-yaml', ['nowhere.yaml'], ['config file not found: nowhere.yaml']),
    ('not-key-value', ['epochs'], ['neither a YAML preset nor key=value']),
    ('unregistered-option', ['tokenizer=nope'], ["tokenizer='nope' is not a registered option", 'character']),
    ('unregistered-src-embed', ['transformer.src_embed=rotary'], ['is not a registered option', 'learned_pos']),
    ('prompt-out-of-vocabulary', ['prompt=Zz'], ["prompt 'Zz'", "not in the vocabulary: 'Z'"]),
    ('empty-prompt', ['prompt='], ['prompt is empty']),
    ('unknown-flag', ['--bogus'], ['unrecognized arguments: --bogus']),
    ('ffn-dropout', ['transformer.ffn.dropout=-0.5'], ['transformer.ffn.dropout must be in [0, 1), got -0.5']),
    ('nan-learning-rate', ['learning_rate=nan'], ["learning_rate must be a finite number, got 'nan'"]),
    ('zero-learning-rate', ['learning_rate=0'], ['learning_rate must be positive, got 0.0']),
    ('betas', ['optimizer.betas=[2,3]'], ['optimizer.betas must each be in [0, 1), got [2.0, 3.0]']),
    ('bpe-vocab-past-the-trainer', ['tokenizer=bpe', f'bpe_vocab_size={2 ** 24 + 1}'],
     ['bpe_vocab_size must be at most 16,777,216']),
    ('negative-checkpoint-minutes', ['checkpoint_minutes=-1'], ['checkpoint_minutes must be at least 0, got -1.0']),
    ('negative-keep-checkpoints', ['keep_checkpoints=-2'], ['keep_checkpoints must be at least 0, got -2']),
    ('negative-micro-batch', ['micro_batch_size=-1'], ['micro_batch_size must be at least 0, got -1']),
    ('labml-key-the-trainer-does-not-read', ['save_models_interval=100'], ["save_models_interval is labml's but"]),
    ('betas-of-three', ['optimizer.betas=(0.9, 0.9, 0.9)'], ['optimizer.betas expects 2 numbers, as [0.9, 0.9]']),
    ('huge-seed', ['seed=1180591620717411303424'], ['seed=1180591620717411303424 is out of range']),
    ('seed-past-64-bits', [f'seed={2 ** 63}'], ['integers here are 64-bit']),
    ('huge-model', ['transformer.d_model=1000000000', 'transformer.n_heads=1'],
     ['the model has 4,000,000,', 'parameters and would need', 'GiB']),
    ('inner-iterations', ['inner_iterations=1000000'], ['inner_iterations=1000000 is more than the training batches '
                                                        'of an epoch (33)']),
    ('recursive-yaml', ['recursive.yaml'], ['recursive.yaml is not valid YAML', 'the alias *a is of a list']),
    ('yaml-alias-bomb', ['bomb.yaml'], ['bomb.yaml is not valid YAML', 'the alias *a is of a list']),
    ('yaml-alias-on-the-command-line', ['optimizer.betas=&a [*a, *a]'], ['the alias *a is of a list']),
    ('fifo-corpus', ['text=pipe'], ['pipe is not a regular file']),
    ('device-corpus', ['text=/dev/zero'], ['/dev/zero is not a regular file']),
    ('fifo-preset', ['pipe.yaml'], ['pipe.yaml is not a regular file']),
]
CASE_IDS = [c[0] for c in CASES]
BY_ID = {c[0]: c for c in CASES}

# A few cases, one of each kind, go through a real `python -m gpt_experiment.main`.
SUBPROCESS_CASES = ['unknown-key', 'float-for-int', 'heads-do-not-divide', 'non-utf8', 'garbage-yaml', 'yaml-list',
                    'unregistered-option', 'prompt-out-of-vocabulary', 'huge-model', 'fifo-corpus', 'yaml-alias-bomb']


@pytest.fixture
def bad_project(project):
    write_bad_inputs(project)
    return project


def _assert_no_run(project: Path):
    runs = list(project.glob('logs/*/*'))
    assert runs == [], f'a run folder was written: {runs}'


def _assert_one_error_line(stderr: str, fragments: List[str]):
    lines = stderr.splitlines()
    assert len(lines) == 1, f'expected one line on stderr, got:\n{stderr}'
    assert lines[0].startswith('error: ')
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize('case_id', CASE_IDS)
def test_bad_input_on_the_command_line(bad_project, capsys, case_id):
    _, args, fragments = BY_ID[case_id]
    status = run(BASE_ARGS + args + ['--name', 'bad'])
    captured = capsys.readouterr()
    assert status == 2
    _assert_one_error_line(captured.err, fragments)
    assert 'Traceback' not in captured.out + captured.err
    _assert_no_run(bad_project)


@pytest.mark.parametrize('case_id', [c for c in CASE_IDS if c != 'unknown-flag'])
def test_bad_input_to_main_is_a_user_error(bad_project, case_id):
    """The same cases through the Python API: `train(overrides)` raises `UserError`."""
    _, args, fragments = BY_ID[case_id]
    with pytest.raises(UserError) as e:
        train(overrides_from_args(BASE_ARGS + args), name='bad')
    message = str(e.value)
    assert '\n' not in message
    for fragment in fragments:
        assert fragment in message
    _assert_no_run(bad_project)


@pytest.mark.slow
@pytest.mark.parametrize('case_id', SUBPROCESS_CASES)
def test_bad_input_in_a_subprocess(tmp_path, case_id):
    project = write_project(tmp_path / 'project')
    write_bad_inputs(project)
    _, args, fragments = BY_ID[case_id]
    result = run_cli(BASE_ARGS + args + ['--name', 'bad'], cwd=project)
    assert result.returncode == 2, result.stderr
    _assert_one_error_line(result.stderr, fragments)
    assert 'Traceback' not in result.stdout + result.stderr
    _assert_no_run(project)


def test_an_alias_of_a_scalar_is_fine(bad_project):
    assert overrides_from_args(['scalar_alias.yaml']) == {'seq_len': 16, 'batch_size': 16}


def test_the_memory_limit_is_the_cgroups_when_it_is_lower(monkeypatch):
    import builtins
    from gpt_experiment import checks
    import torch
    physical = checks.memory_limit(torch.device('cpu'))
    real_open = builtins.open

    def fake_open(path, *args, **kwargs):
        if str(path) == '/sys/fs/cgroup/memory.max':
            import io
            return io.StringIO(f'{2 ** 30}\n')
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(checks, 'open', fake_open, raising=False)
    assert checks.memory_limit(torch.device('cpu')) == min(physical, 2 ** 30)


def test_a_batch_whose_activations_do_not_fit_is_one_line_naming_a_micro_batch_that_does(project, monkeypatch):
    from gpt_experiment import checks
    from conftest import make_configs
    # a machine of 8 MiB: the tiny model fits, a forward pass of 128 windows of 32 tokens does not
    monkeypatch.setattr(checks, 'memory_limit', lambda device: 8 * 2 ** 20)
    conf = make_configs({**TINY, 'text': 'corpus.txt', 'batch_size': 128, 'seq_len': 32, 'inner_iterations': 1})
    with pytest.raises(UserError) as e:
        checks.check_configs(conf)
    message = str(e.value)
    assert message.startswith('a forward pass of 128 windows of 32 tokens would need about ')
    fits = int(message.rsplit('micro_batch_size=', 1)[1].split()[0])
    # and the micro-batch it names does fit
    checks.check_configs(make_configs({**TINY, 'text': 'corpus.txt', 'batch_size': 128, 'seq_len': 32,
                                       'inner_iterations': 1, 'micro_batch_size': fits}))
    assert 0 < fits < 128
