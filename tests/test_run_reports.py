"""
Other places to look at a run: the summary printed when it ends, `gpt-runs`, and TensorBoard event files (`--writers ...,tensorboard`).
"""

import os
import re
import subprocess
import sys

import pytest

from gpt_experiment import train
from gpt_experiment.reports import main as gpt_runs

from conftest import REPO_ROOT, TINY, checkpoint_steps, read_scalars, run_cli, run_dirs, write_project

SHORT = {**TINY, 'text': 'corpus.txt', 'epochs': 2, 'inner_iterations': 1, 'sample_tokens': 3}


def test_summary_and_runs_listing(project, capsys):
    train(dict(SHORT), name='reports')
    out = capsys.readouterr().out
    run = run_dirs(project, 'reports')[0]
    uuid = run.name

    # The summary: the best validation loss and its step, as labml recorded them.
    valid = read_scalars(run, 'loss.valid')
    step, best = min(valid, key=lambda sv: sv[1])
    assert re.search(rf'best valid loss:\s+{best:.4f} at step {step:,}', out), out[-2000:]
    assert re.search(rf'last valid loss:\s+{valid[-1][1]:.4f} at step {valid[-1][0]:,}', out), out[-2000:]
    tokens = checkpoint_steps(run)[-1]
    assert re.search(rf'tokens/s:\s+[\d,]+ \({tokens:,} tokens\)', out)
    assert re.search(r'wall time:\s+[\d.]+ s', out)
    assert f'{run / "checkpoints"}' in out
    assert not re.search(r'^\s*dashboard:', out, re.M)  # no dashboard was configured

    # The runs listing, from the project folder.
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    listing = subprocess.run([sys.executable, '-m', 'gpt_experiment.reports'], cwd=project, env=env,
                             capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    header, *rows = listing.stdout.splitlines()
    assert header.split() == ['uuid', 'name', 'start', 'status', 'duration', 'parent', 'tokens', 'best', 'valid',
                              'checkpoints']
    assert len(rows) == 1
    row = rows[0].split(maxsplit=9)
    assert row[0] == uuid and row[1] == 'reports'
    assert re.fullmatch(r'\d{4}-\d\d-\d\d', row[2])
    assert row[4] == 'completed' and re.fullmatch(r'0:\d\d:\d\d', row[5]) and row[6] == '-'
    assert row[7] == f'{tokens:,}' and row[8] == f'{best:.4f}'
    assert row[9] == ', '.join(str(s) for s in checkpoint_steps(run))


@pytest.mark.slow
def test_tensorboard_writer_writes_events_tensorboard_reads(project):
    pytest.importorskip('tensorboard', reason='TensorBoard is an optional extra: pip install "gpt-experiment[tensorboard]"')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run_cli([*(f'{k}={v}' for k, v in SHORT.items()),
             '--name', 'tb', '--writers', 'screen,sqlite,tensorboard'], cwd=project).check_returncode()
    run = run_dirs(project, 'tb')[0]
    # TensorBoard's own reader finds labml's values (`loss.valid` as `loss/valid`) in the run's event file.
    events = EventAccumulator(str(run / 'tensorboard'))
    events.Reload()
    assert {'loss/train', 'loss/valid', 'accuracy/train', 'accuracy/valid'} <= set(events.Tags()['scalars'])
    valid = read_scalars(run, 'loss.valid')
    got = [(e.step, e.value) for e in events.Scalars('loss/valid')]
    assert [s for s, _ in got] == [s for s, _ in valid]
    assert [v for _, v in got] == pytest.approx([v for _, v in valid], rel=1e-6)
    # the numbers people watch, under exactly these names
    assert {'lr', 'grad_norm', 'tokens_per_second'} <= set(events.Tags()['scalars'])
    # the samples as text, the configs as hyperparameters
    assert 'sampled/text_summary' in events.Tags()['tensors']
    sample = events.Tensors('sampled/text_summary')[-1].tensor_proto.string_val[0].decode()
    assert sample.startswith('It is ')
    from tensorboard.plugins.hparams import plugin_data_pb2
    hparams = events.PluginTagToContent('hparams')
    session = plugin_data_pb2.HParamsPluginData.FromString(hparams['_hparams_/session_start_info'])
    values = session.session_start_info.hparams
    assert values['transformer.d_model'].number_value == TINY['transformer.d_model']
    assert values['epochs'].number_value == SHORT['epochs']
    assert values['text'].string_value == 'file' and values['text_file'].string_value == 'corpus.txt'
    # with the best and the last validation loss as their metrics, to rank runs by
    assert events.Scalars('best_valid_loss')[-1].value == pytest.approx(min(v for _, v in valid), rel=1e-6)
    assert events.Scalars('last_valid_loss')[-1].value == pytest.approx(valid[-1][1], rel=1e-6)


def test_outside_a_labml_project_runs_are_in_logs_of_the_current_folder(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, '-m', 'gpt_experiment.reports'], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f'no runs under {tmp_path.resolve() / "logs"}'


@pytest.mark.parametrize('content, fragment', [
    ('experiments_path: [1, 2]\n', 'experiments_path must be a folder name'),
    ('no_such_setting: 1\n', "unknown labml setting 'no_such_setting'"),
    ('- a list\n', 'is not a mapping of labml settings'),
    ('key: [unclosed\n', 'is not valid YAML'),
])
def test_a_damaged_labml_yaml_is_one_line(tmp_path, monkeypatch, capsys, content, fragment):
    from gpt_experiment.main import run as gpt_train
    (tmp_path / '.labml.yaml').write_text(content)
    monkeypatch.chdir(tmp_path)
    for command, argv in ((gpt_runs, []), (gpt_train, ['epochs=1'])):
        capsys.readouterr()
        assert command(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], lines


@pytest.mark.slow
def test_unknown_writer_is_one_line(tmp_path):
    project = write_project(tmp_path / 'project')
    result = run_cli(['text=corpus.txt', '--writers', 'screen,tensorbord'], cwd=project)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown writer 'tensorbord'; choose from: screen, sqlite, web_api, tensorboard, file"]
    assert run_dirs(project, 'gpt') == []


@pytest.mark.slow
def test_runs_shows_status_duration_parent_tokens_and_best_loss(project, monkeypatch, capsys):
    import shutil
    import signal as signals
    import torch
    from gpt_experiment import runs
    from gpt_experiment.main import run

    args = {**SHORT, 'epochs': 1}
    train(dict(args), name='done', writers='sqlite')
    (done,) = run_dirs(project, 'done')
    train({'epochs': 2}, resume=done.name[:6], writers='sqlite')
    child = [r for r in run_dirs(project, 'done') if r != done][0]

    real = torch.nn.functional.cross_entropy

    def failing(at, how):
        calls = []

        def cross_entropy(*a, **k):
            if torch.is_grad_enabled():
                calls.append(1)
                if len(calls) == at:
                    if how == 'nan':
                        return real(*a, **k) * float('nan')
                    os.kill(os.getpid(), signals.SIGTERM)
            return real(*a, **k)
        return cross_entropy
    cli = [f'{k}={v}' for k, v in args.items()] + ['--writers', 'sqlite', '--name']
    monkeypatch.setattr(torch.nn.functional, 'cross_entropy', failing(5, 'nan'))
    assert run(cli + ['nan']) == 3
    monkeypatch.setattr(torch.nn.functional, 'cross_entropy', failing(5, 'term'))
    assert run(cli + ['stopped']) == 143
    monkeypatch.setattr(torch.nn.functional, 'cross_entropy', real)

    # a run whose process is gone without saying how it ended (kill -9), and one still running
    gone = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    for name, pid in (('killed', int(gone.stdout)), ('running', os.getpid())):
        copy = done.parent / f'{name}0000'
        shutil.copytree(done, copy)
        (copy / 'run_log.jsonl').unlink()
        for f in (copy / 'pids').iterdir():
            started = f.stat()
            f.write_text(str(pid))
            os.utime(f, (started.st_atime, started.st_mtime))

    listed = {r.path: r for r in runs.list_runs(project / 'logs')}
    status = {path.parent.name if path.parent.name != 'done' else path.name: r.status for path, r in listed.items()}
    assert status == {done.name: 'completed', child.name: 'completed', 'killed0000': 'crashed',
                      'running0000': 'running', 'nan': 'non-finite', 'stopped': 'interrupted'}
    step = checkpoint_steps(done)[-1]
    assert listed[done].parent is None and listed[child].parent == done.name
    # tokens trained by each run: the resumed one from its parent's checkpoint on
    assert listed[done].tokens == step and listed[child].tokens == step
    assert listed[child].best_valid_loss == min(v for _, v in read_scalars(child, 'loss.valid'))
    assert all(r.seconds is not None and r.seconds >= 0 for r in listed.values()), [(r.path.name, r.status, r.seconds) for r in listed.values()]
    # and the listing shows it
    capsys.readouterr()
    assert gpt_runs([]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert child.name in rows, out
    assert rows[child.name][4:7] == ['completed', rows[child.name][5], done.name]
    assert re.fullmatch(r'\d+:\d\d:\d\d', rows[child.name][5])


def test_a_run_summary_without_sqlite_says_why_it_has_no_losses(tmp_path):
    from gpt_experiment import reports
    text = reports.summarize(tmp_path, tokens=1000, seconds=2.0, dashboard_url=None)
    assert 'best valid loss: - (not tracked: --writers has no sqlite)' in text
    assert 'tokens/s:        500 (1,000 tokens)' in text
