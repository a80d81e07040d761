"""
The run store: one way to find a run and its checkpoints, complete checkpoints only, loading
that never runs code, and a damaged file named in one line by every command.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from gpt_experiment import UserError, files, runs
from gpt_experiment.checkpoints import load_tensors
from gpt_experiment.evaluate import run as evaluate_run
from gpt_experiment.generate import run as generate_run
from gpt_experiment.main import run as main_run
from gpt_experiment.reports import main as runs_main
from gpt_experiment.runs import load_yaml
from gpt_experiment import train

from conftest import REPO_ROOT, TINY, run_dirs, weights, write_project

SMALL = {**TINY, 'text': 'corpus.txt', 'epochs': 1, 'inner_iterations': 1, 'sample_tokens': 2}


def _fake_run(logs, name, folder, steps=()):
    run = logs / name / folder
    run.mkdir(parents=True)
    (run / 'run.yaml').write_text(f'uuid: {folder.split(".")[0]}\n')
    for step in steps:
        ckpt = run / 'checkpoints' / str(step)
        ckpt.mkdir(parents=True)
        (ckpt / 'model.pth').write_bytes(b'x')
        (ckpt / 'info.json').write_text(json.dumps({'model': 'model.pth'}))
    return run


def test_find_run_by_uuid_or_unique_prefix(tmp_path):
    logs = tmp_path / 'logs'
    a = _fake_run(logs, 'gpt', 'abc123')
    b = _fake_run(logs, 'other', 'abd456')
    # a distributed run: rank 0's folder is the run, other ranks' folders are not runs
    d = _fake_run(logs, 'ddp', 'ffee99.0')
    _fake_run(logs, 'ddp', 'ffee99.1')
    assert runs.find_run('abc123', logs) == a
    assert runs.find_run('abd', logs) == b
    assert runs.find_run('ffee99', logs) == d and runs.find_run('ff', logs) == d
    with pytest.raises(UserError, match=r"run prefix 'ab' is ambiguous: gpt/abc123, other/abd456"):
        runs.find_run('ab', logs)
    with pytest.raises(UserError, match=r"no run 'zz' in .*; runs: ddp/ffee99, gpt/abc123, other/abd456"):
        runs.find_run('zz', logs)
    for bad in ('../gpt', '/abs', '.hidden', ''):
        with pytest.raises(UserError, match='not a run uuid'):
            runs.find_run(bad, logs)
    # a full uuid wins over being the prefix of another
    _fake_run(logs, 'gpt', 'abc1234')
    assert runs.find_run('abc123', logs) == a


@pytest.mark.parametrize('index, why', [
    ({}, 'info.json names no files'),
    ({'training': 'training.pth'}, 'info.json names no model'),
    ({'model': 'gone.pth'}, 'gone.pth is missing or not a regular file'),
    ({'model': '/etc/passwd'}, "info.json names a file outside the checkpoint: '/etc/passwd'"),
    ({'model': '../200/model.pth'}, "info.json names a file outside the checkpoint: '../200/model.pth'"),
    (None, 'info.json is missing or damaged'),
])
def test_a_damaged_newest_checkpoint_is_refused_naming_the_newest_complete(tmp_path, index, why):
    run = _fake_run(tmp_path / 'logs', 'gpt', 'abc', steps=(100, 200, 300))
    info = run / 'checkpoints' / '300' / 'info.json'
    if index is None:
        info.write_text('{"model": ')
    else:
        info.write_text(json.dumps(index))
    assert runs.checkpoint_steps(run) == [100, 200]
    with pytest.raises(UserError) as e:
        runs.find_checkpoint(run)
    assert f'checkpoint 300 of run abc is damaged ({why}); the newest complete checkpoint is 200 (--checkpoint 200)' \
        == str(e.value)
    # an older one can be chosen
    assert runs.find_checkpoint(run, 200) == run / 'checkpoints' / '200'
    with pytest.raises(UserError, match='no checkpoint at step 7; it has: 100, 200'):
        runs.find_checkpoint(run, 7)


class Payload:
    """Unpickling this would run `touch <marker>`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def test_loading_never_runs_code_whatever_torch_is_told(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    marker = tmp_path / 'pwned'
    evil = tmp_path / 'model.pth'
    torch.save({'w': Payload(marker)}, evil)
    # the payload is real: a plain unsafe load runs it
    torch.load(evil, weights_only=False)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UserError, match='model.pth is not a loadable checkpoint file'):
        load_tensors(evil)
    assert not marker.exists()
    evil_yaml = tmp_path / 'configs.yaml'
    evil_yaml.write_text(f'x: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(UserError, match='configs.yaml is not valid YAML'):
        load_yaml(evil_yaml)
    assert not marker.exists()


@pytest.fixture(scope='module')
def trained_once(tmp_path_factory):
    """One small run, trained once for the module in a project of its own."""
    project = write_project(tmp_path_factory.mktemp('store'))
    with pytest.MonkeyPatch.context() as m:
        m.chdir(project)
        train(dict(SMALL), name='store')
    return project


@pytest.fixture
def trained(trained_once, project):
    """A copy of that run in this test's project."""
    shutil.copytree(trained_once / 'logs', project / 'logs')
    return run_dirs(project, 'store')[0]


def _copy(run, suffix):
    copy = run.parent / (run.name + suffix)
    shutil.copytree(run, copy)
    return copy


def _env(**extra):
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS='1', **extra)


@pytest.mark.slow
def test_generate_never_runs_code_from_a_run_folder(trained, project):
    marker = project / 'pwned'
    evil_configs = _copy(trained, 'yaml')
    (evil_configs / 'configs.yaml').write_text(f'x: !!python/object/apply:os.system ["touch {marker}"]\n')
    ckpt = runs.find_checkpoint(trained)
    # weights as a checkpoint saved before safetensors has them: a pickle, read with weights_only
    torch.save({'w': Payload(marker)}, ckpt / 'model.pth')
    # with the size the index records, so that the checkpoint is complete and the file is read
    info = json.loads((ckpt / 'info.json').read_text())
    info['model'] = 'model.pth'
    info['bytes']['model.pth'] = (ckpt / 'model.pth').stat().st_size
    (ckpt / 'info.json').write_text(json.dumps(info))
    for run, file in ((trained, 'model.pth'), (evil_configs, 'configs.yaml')):
        result = subprocess.run([sys.executable, '-m', 'gpt_experiment.generate', '--run', run.name,
                                 '--prompt', 'It is'], cwd=project, capture_output=True, text=True, timeout=120,
                                env=_env(TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD='1'))
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith('error: ') and file in lines[0], lines
        assert not marker.exists()


def _configs(run, change):
    configs = yaml.safe_load((run / 'configs.yaml').read_text())
    change(configs)
    (run / 'configs.yaml').write_text(yaml.safe_dump(configs))


# Every way a file a run needs can be damaged, and the commands that read it
DAMAGES = {
    'model.safetensors truncated': ('model.safetensors', ('generate', 'evaluate', 'resume'),
                                    lambda run: _cut(runs.find_checkpoint(run) / 'model.safetensors')),
    'training.pth gone': ('training.pth', ('resume',), lambda run: (runs.find_checkpoint(run) / 'training.pth').unlink()),
    'configs.yaml not YAML': ('configs.yaml', ('generate', 'evaluate', 'resume'),
                              lambda run: (run / 'configs.yaml').write_text('- [unclosed\n')),
    'configs.yaml a value of the wrong type': ('configs.yaml', ('generate', 'evaluate', 'resume'), lambda run: _configs(
        run, lambda c: c['seq_len'].update(value='sixteen', is_explicitly_specified=True))),
    # nine aliases of nine aliases ... of nine values: 9^9 values once followed, a few lines written
    'configs.yaml a billion laughs': ('configs.yaml', ('generate', 'evaluate', 'resume'),
                                      lambda run: _laughs(run / 'configs.yaml', 'seq_len')),
    'configs.yaml an unknown key': ('configs.yaml', ('generate', 'evaluate', 'resume'), lambda run: _configs(
        run, lambda c: c.update(no_such_key={'value': 1, 'is_explicitly_specified': True}))),
    'configs.yaml a FIFO': ('configs.yaml', ('generate', 'evaluate', 'resume'), lambda run: (
        (run / 'configs.yaml').unlink(), os.mkfifo(run / 'configs.yaml'))),
    'configs.yaml a link out of the run': ('configs.yaml', ('generate', 'evaluate', 'resume'), lambda run: (
        shutil.move(run / 'configs.yaml', run.parent.parent / 'elsewhere.yaml'),
        (run / 'configs.yaml').symlink_to(run.parent.parent / 'elsewhere.yaml'))),
    'run.yaml not YAML': ('run.yaml', ('generate', 'evaluate', 'resume', 'runs'),
                          lambda run: (run / 'run.yaml').write_text('- [unclosed\n')),
    'run.yaml a bad field': ('run.yaml', ('runs',), lambda run: (run / 'run.yaml').write_text(
        (run / 'run.yaml').read_text() + 'start_step: many\n')),
    'run.yaml /dev/zero': ('run.yaml', ('generate', 'runs'), lambda run: (
        (run / 'run.yaml').unlink(), (run / 'run.yaml').symlink_to('/dev/zero'))),
    'run_log.jsonl a bad line': ('run_log.jsonl', ('runs',), lambda run: (run / 'run_log.jsonl').write_text('{"x": \n')),
    'tokenizer.json not JSON': ('tokenizer.json', ('generate', 'evaluate', 'resume'),
                                lambda run: (run / 'tokenizer.json').write_text('{"kind": "character", "itos": ')),
    'tokenizer.json a FIFO': ('tokenizer.json', ('generate', 'evaluate', 'resume'),
                              lambda run: _fifo(run / 'tokenizer.json')),
    'info.json a FIFO': ('info.json', ('generate', 'evaluate', 'resume'), lambda run: _fifo(
        runs.find_checkpoint(run) / 'info.json')),
    'info.json a link out of the checkpoint': ('info.json', ('generate', 'evaluate', 'resume'), lambda run: _link_out(
        runs.find_checkpoint(run) / 'info.json', run.parent.parent / 'info.json')),
    # two characters swapped: the same size, so the weights would load, and every id would mean another character
    'tokenizer.json edited, the same size': ('tokenizer.json', ('generate', 'evaluate', 'resume'),
                                             lambda run: _swap_two(run / 'tokenizer.json')),
    # another vocabulary than the model's: the weights do not fit the model it builds
    'tokenizer.json another vocabulary': ('tokenizer.json', ('generate', 'evaluate'), lambda run: (
        run / 'tokenizer.json').write_text(json.dumps({'kind': 'character', 'itos': list('abc')}))),
}


def _laughs(path, key):
    """`key` given, in labml's `configs.yaml` at `path`, as an alias that is 9^9 values once followed."""
    lines = ['laughs:', '  l1: &l1 [' + ', '.join(['lol'] * 9) + ']']
    lines += [f'  l{i}: &l{i} [' + ', '.join([f'*l{i - 1}'] * 9) + ']' for i in range(2, 10)]
    configs = yaml.safe_load(path.read_text())
    configs[key].update(value='LAUGHS', is_explicitly_specified=True)
    path.write_text('\n'.join(lines) + '\n' + yaml.safe_dump(configs).replace('LAUGHS', '*l9'))


def _link_out(path, elsewhere):
    """`path` becomes a link to the same file moved to `elsewhere`."""
    shutil.move(path, elsewhere)
    path.symlink_to(elsewhere)


def _swap_two(path):
    tokenizer = json.loads(path.read_text())
    itos = tokenizer['itos']
    itos[1], itos[2] = itos[2], itos[1]
    path.write_text(json.dumps(tokenizer))


def _fifo(path):
    path.unlink()
    os.mkfifo(path)


def _cut(path):
    path.write_bytes(path.read_bytes()[:100])


@contextlib.contextmanager
def _within(seconds: int):
    """Fail the test, instead of hanging it, when the block runs longer than `seconds`."""
    def hung(*_):
        raise AssertionError(f'still running after {seconds} s: it hangs')
    before = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


@pytest.mark.parametrize('damage', DAMAGES, ids=DAMAGES)
def test_a_damaged_file_is_one_line_naming_it_in_every_command(trained, project, capsys, damage):
    file, commands, do = DAMAGES[damage]
    good = _copy(trained, 'good')
    (project / 'held_out.txt').write_text('It is a lazy day.\n', encoding='utf-8')
    for i in [0]:
        run = _copy(trained, f'd{i}')
        do(run)
        for command in commands:
            capsys.readouterr()
            with _within(60):  # a FIFO opened for reading waits for a writer that never comes
                if command == 'generate':
                    rc = generate_run(['--run', run.name, '--prompt', 'It is', '--max-new-tokens', '2'])
                elif command == 'evaluate':
                    rc = evaluate_run(['--run', run.name, '--text', 'held_out.txt'])
                elif command == 'resume':
                    rc = main_run(['--resume', run.name, 'epochs=2'])
                else:
                    rc = runs_main([])
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and file in err[0], (file, command, err)
            if command == 'runs':
                # a damaged run is skipped with a warning; the others are listed
                assert rc == 0 and err[0].startswith('warning: skipping run store/')
            else:
                assert rc == 2 and err[0].startswith('error: '), (file, command, err)
    capsys.readouterr()
    assert runs_main([]) == 0
    out = capsys.readouterr().out
    assert good.name in out and trained.name in out


def test_resume_and_generate_take_the_same_prefix_and_checkpoint(trained, project, capsys):
    prefix = trained.name[:10]
    step = runs.checkpoint_steps(trained)[-1]
    rc = generate_run(['--run', prefix, '--prompt', 'It is', '--max-new-tokens', '2'])
    assert rc == 0, capsys.readouterr().err
    conf = train({'epochs': 2}, resume=prefix)
    child = [r for r in run_dirs(project, 'store') if r != trained][0]
    assert runs.run_info(child)['load_run'] == trained.name
    assert runs.checkpoint_steps(child) == [2 * step]
    assert conf.epochs == 2


def test_a_checkpoint_saved_before_safetensors_still_generates(trained, project, capsys):
    """Its weights were `model.pth`, with labml_nn's 5,000-row fixed positional table in them."""
    ckpt = runs.find_checkpoint(trained)
    state = weights(ckpt)
    import labml_nn.transformers.positional_encoding as pe
    state['src_embed.positional_encodings'] = pe.get_positional_encoding(TINY['transformer.d_model'], 5000)
    torch.save(state, ckpt / 'model.pth')
    (ckpt / 'model.safetensors').unlink()
    # the training state as it was then: no format, and epochs done
    torch.save({'optimizer': {}, 'epochs_done': 1}, ckpt / 'training.pth')
    (ckpt / 'info.json').write_text(json.dumps({'model': 'model.pth', 'training': 'training.pth'}))
    capsys.readouterr()
    assert generate_run(['--run', trained.name, '--prompt', 'It is', '--max-new-tokens', '3',
                         '--temperature', '0']) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith('It is')
    # and it cannot be resumed (its training state is of another format): one line that says what can be done
    assert main_run(['--resume', trained.name, 'epochs=2']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'earlier version' in err[0] and 'init_from=' in err[0]


def test_without_its_training_state_a_checkpoint_generates_but_is_not_resumed(trained, project, capsys):
    (runs.find_checkpoint(trained) / 'training.pth').unlink()
    assert runs.checkpoint_steps(trained)
    capsys.readouterr()
    assert generate_run(['--run', trained.name, '--prompt', 'It is', '--max-new-tokens', '3']) == 0
    assert main_run(['--resume', trained.name, 'epochs=2']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'cannot be resumed' in err[0] and 'training.pth' in err[0]


@pytest.mark.parametrize('file', ['tokenizer.json', 'configs.yaml'])
def test_a_run_file_over_the_size_limit_is_one_line(trained, project, capsys, file):
    path = trained / file
    # one byte over the limit, as a sparse file: nothing is written, and without the limit the
    # whole of it would be read into memory
    os.truncate(path, files.RUN_FILE_BYTES + 1)
    capsys.readouterr()
    assert generate_run(['--run', trained.name, '--prompt', 'It is', '--max-new-tokens', '2']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: ') and file in err[0], err
    assert f'larger than {files.RUN_FILE_BYTES:,} bytes' in err[0], err


def test_the_listing_takes_a_huge_pid_and_stray_folders_in_checkpoints(trained, project, capsys):
    # a run that ended without a word (no run log), whose pid file holds no possible pid
    huge = _copy(trained, 'pid')
    (huge / 'run_log.jsonl').unlink()
    pids = huge / 'pids'
    pids.mkdir(exist_ok=True)
    for pid in pids.glob('*.pid'):
        pid.unlink()
    (pids / '0.pid').write_text('9' * 40 + '\n')
    # folders in checkpoints/ that are not steps: a name, a negative number, non-ASCII digits
    stray = _copy(trained, 'stray')
    for name in ('latest', '-5', '\uff11\uff12', '12abc'):
        (stray / 'checkpoints' / name).mkdir()
    steps = runs.checkpoint_steps(trained)
    capsys.readouterr()
    with _within(60):
        assert runs_main([]) == 0
    captured = capsys.readouterr()
    assert 'Traceback' not in captured.err and 'warning: skipping' not in captured.err, captured.err
    for run in (trained, huge, stray):
        assert run.name in captured.out, (run.name, captured.out)
    assert [r.status for r in runs.list_runs(project / 'logs') if r.path == huge] == ['crashed']
    assert runs.checkpoint_steps(stray) == steps
