"""
The run store: one way to find a run and its checkpoints, complete checkpoints only, loading
that never runs code, and a damaged file named in one line by every command.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from gpt_experiment import UserError, runs
from gpt_experiment.checkpoints import load_tensors
from gpt_experiment.generate import run as generate_run
from gpt_experiment.main import run as main_run
from gpt_experiment.reports import main as runs_main
from gpt_experiment.runs import load_yaml
from gpt_experiment import train

from conftest import REPO_ROOT, TINY, run_dirs

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


@pytest.fixture
def trained(project):
    train(dict(SMALL), name='store')
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
    torch.save({'w': Payload(marker)}, ckpt / 'model.pth')
    # with the size the index records, so that the checkpoint is complete and the file is read
    info = json.loads((ckpt / 'info.json').read_text())
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


def _damage(run, file):
    """Truncate, garble or remove one file of a run."""
    path = runs.find_checkpoint(run) / file if file.endswith('.pth') else run / file
    if file == 'model.pth':
        path.write_bytes(path.read_bytes()[:100])
    elif file == 'training.pth':
        path.unlink()
    elif file == 'tokenizer.json':
        path.write_text('{"kind": "character", "itos": ')
    else:
        path.write_text('- [unclosed\n')
    return path


# Every file a run needs, and the commands that read it
DAMAGED = [('model.pth', ('generate', 'resume')), ('training.pth', ('resume',)),
           ('configs.yaml', ('generate', 'resume')), ('run.yaml', ('generate', 'resume', 'runs')),
           ('tokenizer.json', ('generate', 'resume'))]


def test_a_damaged_file_is_one_line_naming_it_in_every_command(trained, project, capsys):
    good = _copy(trained, 'good')
    for i, (file, commands) in enumerate(DAMAGED):
        run = _copy(trained, f'd{i}')
        _damage(run, file)
        for command in commands:
            capsys.readouterr()
            if command == 'generate':
                rc = generate_run(['--run', run.name, '--prompt', 'It is', '--max-new-tokens', '2'])
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
        shutil.rmtree(run)
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
