"""
`gpt-evaluate`: loss, perplexity, bits per character and per byte of a checkpoint on a text,
through the run's tokenizer and context with a sliding window; bad files are one line.
"""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from gpt_experiment import evaluate, runs
from gpt_experiment import train

from conftest import CORPUS, PARAGRAPH, REPO_ROOT, TINY, run_dirs, weights


@pytest.fixture
def char_run(project):
    train({**TINY, 'text': 'corpus.txt', 'epochs': 1, 'inner_iterations': 1, 'sample_tokens': 2},
         name='ev', writers='sqlite')
    return run_dirs(project, 'ev')[0]


def _evaluate(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, '-m', 'gpt_experiment.evaluate', *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize('n', [2, 3, 17, 18, 40, 101])
@pytest.mark.parametrize('seq_len, stride', [(16, 8), (16, 16), (16, 1), (5, 3)])
def test_windows_score_every_token_once_within_the_context(n, seq_len, stride):
    scored = []
    for start, end, first in evaluate.windows(n, seq_len, stride):
        assert end - start <= seq_len + 1 and start < first < end
        scored += range(first, end)
    assert scored == list(range(1, n))


def test_one_window_is_the_model_own_loss(char_run, project):
    text = PARAGRAPH[:17]  # seq_len + 1 characters: one window
    model, conf, tokenizer = runs.load_model(char_run, runs.find_checkpoint(char_run), 'cpu')
    got = evaluate.evaluate(model, tokenizer, text, seq_len=conf.seq_len, stride=8)
    ids = torch.tensor(tokenizer.encode(text))[:, None]
    with torch.no_grad():
        expected = F.cross_entropy(model(ids[:-1])[0][:, 0], ids[1:, 0]).item()
    assert got['tokens'] == 16 and got['characters'] == 16 and got['bytes'] == 16
    assert got['loss'] == pytest.approx(expected, rel=1e-6)
    assert got['perplexity'] == pytest.approx(math.exp(expected))
    assert got['bits_per_character'] == pytest.approx(expected / math.log(2))
    assert got['bits_per_byte'] == pytest.approx(expected / math.log(2))


@pytest.mark.slow
def test_evaluate_command(char_run, project):
    (project / 'held_out.txt').write_text(PARAGRAPH * 3, encoding='utf-8')
    out = _evaluate(['--run', char_run.name[:8], '--text', 'held_out.txt', '--json'], project)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r['run'] == char_run.name and r['tokens'] == len(PARAGRAPH) * 3 - 1
    assert r['seq_len'] == 16 and r['stride'] == 8
    assert 0 < r['loss'] < math.log(len(set(PARAGRAPH)) + 5)
    assert r['bits_per_byte'] == pytest.approx(r['loss'] / math.log(2))
    # a wider stride scores with less context: a little worse, never better
    wide = json.loads(_evaluate(['--run', char_run.name, '--text', 'held_out.txt', '--json', '--stride', '16'],
                                project).stdout)
    assert wide['tokens'] == r['tokens'] and wide['loss'] >= r['loss'] - 1e-6
    text = _evaluate(['--run', char_run.name, '--text', 'held_out.txt'], project)
    assert text.returncode == 0 and 'bits per byte:' in text.stdout and 'perplexity:' in text.stdout


@pytest.mark.slow
def test_bad_files_are_one_line(char_run, project):
    (project / 'zebra.txt').write_text('Zebra? Zebra!', encoding='utf-8')
    (project / 'latin1.txt').write_bytes('café'.encode('latin-1'))
    (project / 'good.txt').write_text(PARAGRAPH, encoding='utf-8')
    for args, fragment in [(['--text', 'zebra.txt'], "zebra.txt has characters that are not in the vocabulary of the run's tokenizer: "),
                           (['--text', 'latin1.txt'], 'latin1.txt is not UTF-8'),
                           (['--text', 'missing.txt'], 'missing.txt is missing'),
                           (['--text', 'good.txt', '--stride', '0'], '--stride must be in [1, 16]')]:
        out = _evaluate(['--run', char_run.name, *args], project)
        assert out.returncode == 2 and out.stdout == ''
        assert out.stderr.startswith('error: ') and out.stderr.count('\n') == 1 and fragment in out.stderr, out.stderr


def test_bits_per_byte_counts_utf8_bytes_with_bpe(project):
    conf = train({**TINY, 'text': 'corpus.txt', 'epochs': 1, 'inner_iterations': 1, 'sample_tokens': 2,
                  'tokenizer': 'bpe', 'bpe_vocab_size': 300}, name='bpe', writers='sqlite')
    run = run_dirs(project, 'bpe')[0]
    # the run's own validation split: its tokens as the run split them, every one but the first
    out = _evaluate(['--run', run.name, '--json'], project)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)['tokens'] == len(conf.text.valid) - 1
    (project / 'accents.txt').write_text('Déjà vu, café crème. ' * 8, encoding='utf-8')
    out = _evaluate(['--run', run.name, '--text', 'accents.txt', '--json'], project)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    # four accented letters a line, two bytes each in UTF-8
    assert r['bytes'] == r['characters'] + 4 * 8
    bits = r['loss'] * r['tokens'] / math.log(2)
    assert r['bits_per_character'] == pytest.approx(bits / r['characters'])
    assert r['bits_per_byte'] == pytest.approx(bits / r['bytes'])


def test_evaluate_scores_the_newest_runs_own_validation_split_by_default(char_run, project):
    out = _evaluate(['--json'], project)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r['run'] == char_run.name and r['text'].startswith('the validation split of')
    # the last 10% of the corpus, every token of it but the first
    assert r['tokens'] == len(CORPUS) - int(len(CORPUS) * 0.9) - 1
    assert 0 < r['loss'] < math.log(len(set(CORPUS)) + 5)


def test_damaged_weights_are_one_line_not_a_json_nan(char_run, project):
    ckpt = runs.find_checkpoint(char_run)
    from safetensors.torch import save_file
    state = {k: v * float('nan') for k, v in weights(ckpt).items()}
    save_file(state, str(ckpt / 'model.safetensors'))
    info = json.loads((ckpt / 'info.json').read_text())
    info['bytes']['model.safetensors'] = (ckpt / 'model.safetensors').stat().st_size
    (ckpt / 'info.json').write_text(json.dumps(info))
    (project / 'held_out.txt').write_text(PARAGRAPH, encoding='utf-8')
    out = _evaluate(['--run', char_run.name, '--text', 'held_out.txt', '--json'], project)
    assert out.returncode == 3 and out.stdout == ''
    assert out.stderr.startswith('error: the loss on held_out.txt is not finite') and out.stderr.count('\n') == 1
