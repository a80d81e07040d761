"""`gpt-runs plot` and `gpt-runs compare`, on runs made here."""

import pytest

from gpt_experiment import runs
from gpt_experiment import train
from gpt_experiment.reports import main as gpt_runs

from conftest import TINY, run_dirs


@pytest.fixture
def two_runs(project):
    common = {**TINY, 'text': 'corpus.txt', 'epochs': 2, 'inner_iterations': 2, 'sample_tokens': 2}
    train({**common, 'learning_rate': 1e-3}, name='a', writers='sqlite')
    train({**common, 'learning_rate': 3e-3}, name='b', writers='sqlite')
    return run_dirs(project, 'a')[0], run_dirs(project, 'b')[0]


def test_compare_prints_the_configs_that_differ_and_the_best_valid_loss(two_runs, capsys):
    a, b = two_runs
    capsys.readouterr()
    assert gpt_runs(['compare', a.name[:8], b.name]) == 0
    out = capsys.readouterr().out.splitlines()
    assert a.name[:8] in out[0] and b.name[:8] in out[0]
    lr = next(line for line in out if line.startswith('learning_rate')).split()
    assert lr[1:] == ['0.001', '0.003']
    # configs given to both alike are not shown
    assert not any(line.startswith(('epochs', 'seq_len')) for line in out)
    best = [line for line in out if line.startswith('best valid loss')]
    assert len(best) == 1
    for run in (a, b):
        step, loss = min(runs.scalars(run, 'loss.valid'), key=lambda sv: sv[1])
        assert f'{loss:.4f} at step {step:,}' in best[0]


def test_compare_shows_the_value_a_run_had_when_it_was_left_at_its_default(two_runs, project, capsys):
    a, _ = two_runs
    train({**TINY, 'text': 'corpus.txt', 'epochs': 2, 'inner_iterations': 2, 'sample_tokens': 2}, name='c',
          writers='sqlite')
    (c,) = run_dirs(project, 'c')
    capsys.readouterr()
    assert gpt_runs(['compare', a.name, c.name]) == 0
    lr = next(line for line in capsys.readouterr().out.splitlines() if line.startswith('learning_rate')).split()
    # the default's value, not a dash
    assert lr[1:] == ['0.001', '0.0006']


def test_plot_draws_a_png(two_runs, project, capsys):
    import matplotlib.image
    a, b = two_runs
    assert gpt_runs(['plot', a.name, b.name[:6], '-o', 'curves.png']) == 0
    png = project / 'curves.png'
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert matplotlib.image.imread(png).shape[:2] == (660, 1080)
    assert capsys.readouterr().out.strip().endswith('curves.png')
    # a folder gets its curves.png
    (project / 'plots').mkdir()
    assert gpt_runs(['plot', a.name, '-o', 'plots']) == 0
    assert (project / 'plots' / 'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert not (project / 'plots.png').exists()


def test_plot_and_compare_bad_input_is_one_line(two_runs, capsys):
    a, _ = two_runs
    for argv, fragment in [(['compare', a.name], 'needs two runs'),
                           (['plot', 'ffff'], "no run 'ffff'"),
                           (['plot', a.name, '-o', '/nonexistent/dir/c.png'], 'cannot write /nonexistent/dir/c.png'),
                           (['plot', a.name, '-o', 'curves.txt'], "draws a PNG: give -o NAME.png, not 'curves.txt'"),
                           # a typo of a command is not an experiment's name to list
                           (['plots', a.name], "gpt-runs takes an experiment name, or plot or compare"),
                           (['plots'], "no experiment 'plots'"),
                           (['--json'], 'gpt-runs takes an experiment name')]:
        capsys.readouterr()
        assert gpt_runs(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith('error: ') and err.count('\n') == 1 and fragment in err, err
