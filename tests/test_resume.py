"""
Runs that survive: resume repeats the run exactly, a fixed seed repeats the losses, a
checkpoint killed mid-write is never picked, a non-finite loss stops the run before anything
is saved, and a truncated checkpoint is one line of error.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from gpt_experiment.runs import find_checkpoint
from gpt_experiment.metrics import LossNotFinite
from gpt_experiment.main import run
from gpt_experiment import train

from conftest import REPO_ROOT, TINY, checkpoint_steps, read_scalars, run_dirs, write_project

# Dropout on, so that resuming must restore the random generators too; a cosine schedule
# pinned to 200 steps, so that a 1-epoch run and a 2-epoch run share the same schedule.
RESUME = {**TINY, 'text': 'corpus.txt', 'transformer.dropout': 0.1, 'inner_iterations': 2, 'sample_tokens': 2,
          'learning_rate': 3e-3, 'warmup_steps': 1024, 'optimizer.total_steps': 200, 'seed': 7}


def _params(conf):
    return {k: v.detach().clone() for k, v in conf.model.state_dict().items()}


def _curve(run_dir, indicator='loss.train'):
    return read_scalars(run_dir, indicator)


def test_resume_repeats_the_straight_run(project):
    straight = train({**RESUME, 'epochs': 2}, name='straight')
    first = train({**RESUME, 'epochs': 1}, name='resumed')
    (parent,) = run_dirs(project, 'resumed')
    step = checkpoint_steps(parent)[-1]

    # the resumed run only names the run; epochs=2 is applied over the parent's configs
    resumed = train({'epochs': 2}, resume=parent.name)
    children = [r for r in run_dirs(project, 'resumed') if r != parent]
    assert len(children) == 1
    child = children[0]
    assert yaml.safe_load((child / 'run.yaml').read_text())['load_run'] == parent.name
    # the parent is not written to, and its checkpoint is not copied into the child
    assert checkpoint_steps(parent) == [step]
    assert step not in checkpoint_steps(child)

    a, b = _params(straight), _params(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
    # and not trivially: the first half differs from the end
    assert not all(torch.allclose(a[k], v, atol=1e-6) for k, v in _params(first).items())

    (straight_dir,) = run_dirs(project, 'straight')
    for indicator in ('loss.train', 'loss.valid'):
        whole = _curve(straight_dir, indicator)
        joined = _curve(parent, indicator) + _curve(child, indicator)
        assert [s for s, _ in whole] == [s for s, _ in joined]
        assert [v for _, v in whole] == pytest.approx([v for _, v in joined], abs=1e-6)
    # labml's global step continues from the checkpoint's
    assert min(s for s, _ in _curve(child)) > step
    assert checkpoint_steps(child)[-1] == checkpoint_steps(straight_dir)[-1]


def test_same_seed_same_first_50_losses(project):
    # batches of 4: 65 steps in the one epoch
    args = {**RESUME, 'batch_size': 4, 'epochs': 1, 'log_interval': 1, 'is_save_models': False}
    curves = []
    for seed, name in ((3, 'a'), (3, 'b'), (4, 'c')):
        train({**args, 'seed': seed}, name=name)
        curves.append([v for _, v in _curve(run_dirs(project, name)[0])])
    assert len(curves[0]) >= 50
    assert curves[0][:50] == curves[1][:50]
    assert curves[0][:50] != curves[2][:50]


def _nan_after(n):
    """`F.cross_entropy` that turns NaN after `n` training steps."""
    real = torch.nn.functional.cross_entropy
    calls = []

    def cross_entropy(*args, **kwargs):
        loss = real(*args, **kwargs)
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) > n:
                return loss * float('nan')
        return loss
    return cross_entropy


def test_nan_loss_stops_before_saving(project, monkeypatch, capsys):
    # an epoch is 33 steps: NaN from the 5th step of the second epoch
    monkeypatch.setattr(torch.nn.functional, 'cross_entropy', _nan_after(37))
    args = [f'{k}={v}' for k, v in RESUME.items()] + ['epochs=3', '--name', 'nan']
    capsys.readouterr()
    assert run(args) == 3
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith('error: training loss is not finite at step ')
    (run_dir,) = run_dirs(project, 'nan')
    steps = checkpoint_steps(run_dir)
    # one whole epoch (and its checkpoint), then the 5th step of the next one is named
    assert len(steps) == 1
    assert f'at step {steps[0] + 5 * 8 * 16:,} ' in err[0]
    state = torch.load(find_checkpoint(run_dir) / 'model.pth', weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values())
    assert not list(run_dir.glob('.checkpoint-*'))


# A run whose second checkpoint hangs half written: `torch.save` of the training state writes
# some bytes, tells the test, and waits to be killed.
KILLED_MID_WRITE = r'''
import os, sys, time, torch
import gpt_experiment.checkpoints as checkpoints
from gpt_experiment.main import run
saves = []
real_save = torch.save
def slow_save(obj, f, *a, **k):
    if 'optimizer' in obj:
        saves.append(1)
        if len(saves) == 2:
            f.write(b'\x80\x02 half a checkpoint')
            f.flush()
            open('mid-write', 'w').close()
            time.sleep(600)
    return real_save(obj, f, *a, **k)
torch.save = slow_save
sys.exit(run(sys.argv[1:]))
'''


def _env():
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS='1')
    return env


def test_kill_9_mid_checkpoint_leaves_the_previous_one(tmp_path, monkeypatch):
    project = write_project(tmp_path / 'project')
    (project / 'killed.py').write_text(KILLED_MID_WRITE, encoding='utf-8')
    args = [f'{k}={v}' for k, v in RESUME.items()] + ['epochs=3', '--name', 'kill']
    proc = subprocess.Popen([sys.executable, 'killed.py', *args], cwd=project, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(2400):
            if (project / 'mid-write').exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert (project / 'mid-write').exists(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else ''
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    (run_dir,) = run_dirs(project, 'kill')
    # the half-written checkpoint is a temporary folder that nothing lists
    (partial,) = run_dir.glob('.checkpoint-*.tmp')
    assert (partial / 'training.pth').stat().st_size > 0
    steps = checkpoint_steps(run_dir)
    assert len(steps) == 1
    assert find_checkpoint(run_dir) == run_dir / 'checkpoints' / str(steps[0])
    for f in ('model.pth', 'training.pth'):
        torch.load(find_checkpoint(run_dir) / f, weights_only=True)

    # and --resume continues from it
    monkeypatch.chdir(project)
    train({'epochs': 2}, resume=run_dir.name)
    child = [r for r in run_dirs(project, 'kill') if r != run_dir][0]
    # the parent's checkpoint is not copied into the child
    assert checkpoint_steps(child) == [2 * steps[0]]
    # and what the killed writer left is gone, now that it is
    assert not list(run_dir.glob('.checkpoint-*.tmp'))


BAD_RESUMES = [
    (['--resume', 'nosuchrun'], ["no run 'nosuchrun'"]),
    (['--checkpoint', '5'], ['--checkpoint needs --resume']),
    (['--resume', '{run}', '--checkpoint', '7'], ['no checkpoint at step 7']),
    (['--resume', '{run}', '--checkpoint', 'x'], ["argument --checkpoint: invalid int value: 'x'"]),
    (['--resume', '{truncated}'], ['model.pth is not a loadable checkpoint file', 'no complete checkpoint before it']),
    (['--resume', '{run}', 'epochs=1'], ['has done 1 of epochs=1']),
]


def test_bad_resume_is_one_line(project, capsys):
    train({**RESUME, 'epochs': 1}, name='parent')
    (parent,) = run_dirs(project, 'parent')
    # a copy of the run whose model file is cut in half
    truncated = parent.parent / (parent.name + 'copy')
    shutil.copytree(parent, truncated)
    model = find_checkpoint(truncated) / 'model.pth'
    model.write_bytes(model.read_bytes()[:model.stat().st_size // 2])

    for extra, fragments in BAD_RESUMES:
        before = sorted(p.name for p in parent.parent.iterdir())
        capsys.readouterr()
        args = [a.format(run=parent.name, truncated=truncated.name) for a in extra]
        assert run(args + ['--name', 'parent']) == 2, extra
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith('error: '), (extra, err)
        for fragment in fragments:
            assert fragment in err[0], (extra, err)
        if 'epochs=1' not in extra:
            # refused before a run folder is written
            assert sorted(p.name for p in parent.parent.iterdir()) == before, extra


SCHEDULE = {**TINY, 'text': 'corpus.txt', 'inner_iterations': 1, 'sample_tokens': 2, 'learning_rate': 3e-3,
            'warmup_steps': 8 * 16 * 10, 'is_save_models': True}


def test_resume_overrides_win_and_the_schedule_is_the_resumed_runs(project):
    # every training step reports its learning rate, by global step (tokens)
    args = {**SCHEDULE, 'log_interval': 1}
    train({**args, 'epochs': 2}, name='straight', writers='sqlite')
    straight = dict(read_scalars(run_dirs(project, 'straight')[0], 'lr'))
    train({**args, 'epochs': 1}, name='parent', writers='sqlite')
    (parent,) = run_dirs(project, 'parent')
    last = max(dict(read_scalars(parent, 'lr')))

    # epochs=2 trains longer on the schedule of a straight 2-epoch run: the cosine is not the
    # parent's 1-epoch one, whose learning rate would have climbed back up
    train({'epochs': 2}, resume=parent.name, writers='sqlite')
    child = newest_run(project, 'parent')
    resumed = dict(read_scalars(child, 'lr'))
    assert min(resumed) > last and sorted(resumed) == [s for s in sorted(straight) if s > last]
    for step, lr in resumed.items():
        assert lr == pytest.approx(straight[step], rel=1e-12), step

    # the learning rate and the warm-up given to --resume win over the optimizer's saved state:
    # the parent's warm-up (10 steps, to 3e-3) is over, the new one (100 steps, to 1e-2) is not
    train({'epochs': 2, 'learning_rate': 1e-2, 'warmup_steps': 8 * 16 * 100}, resume=parent.name, writers='sqlite')
    child = newest_run(project, 'parent')
    rates = [lr for _, lr in read_scalars(child, 'lr')]
    assert all(a < b for a, b in zip(rates, rates[1:])) and 3e-3 < rates[0] and rates[-1] < 1e-2
    assert yaml.safe_load((child / 'configs.yaml').read_text())['learning_rate']['value'] == 1e-2


def newest_run(project, name):
    return max(run_dirs(project, name), key=lambda r: r.stat().st_mtime)


def test_resume_keeps_the_runs_tokenizer(project, capsys):
    train({**SCHEDULE, 'epochs': 1}, name='chars')
    (parent,) = run_dirs(project, 'chars')
    saved = (parent / 'tokenizer.json').read_text()
    corpus = project / 'corpus.txt'
    text = corpus.read_text()

    # every 'z' gone: a rebuilt vocabulary would shift the ids of the characters after 'z'
    corpus.write_text(text.replace('z', 'y'))
    # (giving the tokenizer it has is no change)
    train({'epochs': 2, 'tokenizer': 'character'}, resume=parent.name)
    child = [r for r in run_dirs(project, 'chars') if r != parent][0]
    assert (child / 'tokenizer.json').read_text() == saved

    # a character the run never saw is one line
    corpus.write_text(text.replace('apples', 'Apples'))
    capsys.readouterr()
    assert run(['--resume', parent.name, 'epochs=2']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: corpus.txt has characters that are not in the vocabulary of the run it continues from: 'A'; "
                   "a run keeps its tokenizer"]

    # what cannot change on resume is refused in one line: the tokenizer, the model's shape
    corpus.write_text(text)
    for extra, fragment in ((['tokenizer=bpe'], 'tokenizer cannot change when resuming'),
                            (['transformer.d_model=64'], 'does not fit this run')):
        capsys.readouterr()
        assert run(['--resume', parent.name, 'epochs=2', *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], err


def test_resume_does_not_retrain_a_bpe_tokenizer(project):
    train({**SCHEDULE, 'epochs': 1, 'tokenizer': 'bpe', 'bpe_vocab_size': 300}, name='bpe')
    (parent,) = run_dirs(project, 'bpe')
    # text appended: a retrained BPE would learn other merges
    with open(project / 'corpus.txt', 'a') as f:
        f.write('Quixotic zebras juggle xylophones; quixotic zebras juggle xylophones.\n' * 20)
    train({'epochs': 2}, resume=parent.name)
    child = [r for r in run_dirs(project, 'bpe') if r != parent][0]
    assert (child / 'tokenizer.json').read_text() == (parent / 'tokenizer.json').read_text()
