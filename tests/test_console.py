"""
What a run prints: plain lines when piped (one per report and one per validation, no ANSI
codes, no carriage returns, no `Prepare` sections unless `--verbose`), and in a terminal a
status line over the whole run that fits the width, the losses first, with a line for each
validation that stays.
"""

import re

import pytest

from conftest import TINY, run_cli
from gpt_experiment import console
from labml.logger import Text


def _args(*extra):
    return ['text=corpus.txt', *(f'{k}={v}' for k, v in TINY.items()), 'epochs=1', 'inner_iterations=2',
            'log_interval=2', '--writers', 'screen,sqlite', *extra]


@pytest.mark.slow
def test_piped_run_prints_plain_lines(project):
    out = run_cli(_args(), project)
    assert out.returncode == 0, out.stderr
    log = out.stdout
    assert '\x1b' not in log and '\r' not in log
    assert 'Prepare ' not in log
    reports = [line for line in log.splitlines() if re.match(r'\s+[\d,]+  epoch 1/1  loss \d', line)]
    # one line per report, every `log_interval` steps and at the end of each stretch, and one per validation
    assert len(reports) >= 3
    steps = [int(line.split()[0].replace(',', '')) for line in reports]
    assert steps == sorted(steps) and steps[-1] > steps[0]
    assert len([line for line in reports if ' valid ' in line]) == 2
    assert all(' tok/s ' in line and ' lr ' in line for line in reports)
    # the greedy sample, as text
    assert any(line.startswith('It is ') for line in log.splitlines())
    assert 'best valid loss:' in log


@pytest.mark.slow
def test_verbose_shows_the_prepare_sections(project):
    out = run_cli(_args('--verbose'), project)
    assert out.returncode == 0, out.stderr
    assert 'Prepare model...[DONE]' in out.stdout and '\x1b' not in out.stdout


def _visible(text: str) -> str:
    return re.sub(r'\x1b\[[0-9;]*[mK]', '', text)


@pytest.mark.parametrize('columns', [60, 80, 100, 160])
def test_the_status_line_fits_the_terminal_with_the_losses_first(capsys, monkeypatch, columns):
    monkeypatch.setattr(console.shutil, 'get_terminal_size', lambda: __import__('os').terminal_size((columns, 30)))
    display = console.Display(live=True, total=1_000_000, start=0, epochs=3)
    display.report(250_000, 0, {'loss.train': 1.84321, 'accuracy.train': 0.5, 'grad_norm': 0.9,
                                'tokens_per_second': 61204.2, 'lr': 3.1e-3})
    display.validation(250_000, 0, {'loss.valid': 1.90211, 'accuracy.valid': 0.48})
    display.report(500_000, 1, {'loss.train': 1.70001, 'tokens_per_second': 61000.0, 'lr': 2.9e-3})
    display.close()
    out = capsys.readouterr().out
    lines = [_visible(part) for part in re.split(r'[\r\n]', out) if part.strip()]
    status = [line for line in lines if '%|' in line]
    assert status and all(len(line) <= columns - 1 for line in status), status
    last = status[-1]
    # the losses come first, then the epoch, the progress and the time left
    assert last.startswith('loss 1.7000  valid 1.9021')
    assert ' 50%|' in last and ' left' in last
    if columns >= 80:
        assert 'epoch 2/3' in last
    if columns >= 100:
        assert '61,000 tok/s' in last and 'lr 2.9e-03' in last
    # the validation's line stays, above it
    assert any(line.lstrip().startswith('250,000  epoch 1/3  loss 1.84321  valid 1.90211') for line in lines)


def test_terminal_status_line_fits_the_width(capsys, monkeypatch):
    monkeypatch.setattr(console.shutil, 'get_terminal_size', lambda: __import__('os').terminal_size((40, 20)))
    c = console.Console(live=True, color=True, verbose=False)
    status = [(f'{123456:8,}:  ', Text.highlight), 'Train: 50% 12ms ', ' loss.train: ', ('2.34567', Text.value),
              ' accuracy.train: ', ('0.31', Text.value)]
    c.log(status, is_new_line=False, is_reset=True)
    c.log(status, is_new_line=False, is_reset=True)
    written = capsys.readouterr().out
    updates = written.split(console.CLEAR_LINE)[1:]
    assert len(updates) == 2
    assert all(len(_visible(u)) == 39 and '\n' not in u for u in updates)
    assert '\x1b[' in updates[0]
    # a line that ends is not cut
    c.log(['x' * 60], is_new_line=True, is_reset=True)
    assert 'x' * 60 + '\n' in capsys.readouterr().out


@pytest.mark.parametrize('env, tty, expected', [({}, True, True), ({'NO_COLOR': '1'}, True, False), ({}, False, False)])
def test_colours_only_on_a_terminal_without_no_color(monkeypatch, env, tty, expected):
    monkeypatch.delenv('NO_COLOR', raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(console.sys.stdout, 'isatty', lambda: tty)
    assert console.colors_wanted() is expected


def test_no_color_terminal_has_no_colour_codes(capsys):
    c = console.Console(live=True, color=False, verbose=False)
    c.log([('It is ', Text.subtle), ('a sample', Text.value)], is_new_line=True, is_reset=True)
    assert capsys.readouterr().out == console.CLEAR_LINE + 'It is a sample\n'
