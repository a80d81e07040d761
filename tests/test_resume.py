"""
Runs that survive: resume repeats the run exactly, a fixed seed repeats the losses, a
checkpoint killed mid-write is never picked, a non-finite loss stops the run before anything
is saved, and a truncated checkpoint is one line of error.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from gpt_experiment.runs import find_checkpoint
from gpt_experiment.main import run
from gpt_experiment import train

from conftest import REPO_ROOT, TINY, checkpoint_steps, read_scalars, run_dirs, write_project, weights

# Dropout on, so that resuming must restore the random generators too; every step reports its
# learning rate; two stretches an epoch, each with its sample and validation. An epoch of the
# test corpus is 33 steps of 8 windows of 16 tokens.
RESUME = {**TINY, 'text': 'corpus.txt', 'transformer.dropout': 0.1, 'inner_iterations': 2, 'sample_tokens': 3,
          'learning_rate': 3e-3, 'warmup_steps': 1024, 'seed': 7, 'epochs': 2, 'log_interval': 1}
STEPS_PER_EPOCH = 33


def _params(conf):
    return {k: v.detach().clone() for k, v in conf.model.state_dict().items()}


def _curve(run_dir, indicator='loss.train'):
    return read_scalars(run_dir, indicator)


class StopAt:
    """
    Send this process SIGINT (or `sig`) at one moment of a run: during training step `n`
    (`'step'`), validation batch `n` (`'valid'`), or the first token of sample `n` (`'sample'`),
    counted from the start of the run. The run stops there as it would on a Ctrl-C.
    """

    def __init__(self, monkeypatch, kind: str, n: int, sig=signal.SIGINT):
        from gpt_experiment import sampling
        self.kind, self.n, self.sig, self.counts = kind, n, sig, {'step': 0, 'valid': 0, 'sample': 0}
        real_loss, real_sample = torch.nn.functional.cross_entropy, sampling.greedy_continuation

        def cross_entropy(*args, **kwargs):
            self.tick('step' if torch.is_grad_enabled() else 'valid')
            return real_loss(*args, **kwargs)

        def greedy_continuation(*args, **kwargs):
            self.tick('sample')
            yield from real_sample(*args, **kwargs)
        monkeypatch.setattr(torch.nn.functional, 'cross_entropy', cross_entropy)
        monkeypatch.setattr(sampling, 'greedy_continuation', greedy_continuation)

    def tick(self, kind):
        self.counts[kind] += 1
        if kind == self.kind and self.counts[kind] == self.n:
            os.kill(os.getpid(), self.sig)


def _train_until_stopped(monkeypatch, overrides, stop, **kwargs):
    """A run (or a resume) that is stopped by `stop = (kind, n)`; its folder."""
    before = set(run_dirs(Path.cwd(), 'chain'))
    with monkeypatch.context() as m:
        StopAt(m, *stop)
        with pytest.raises(KeyboardInterrupt):
            train(overrides, name='chain', writers='sqlite', **kwargs)
    (new,) = set(run_dirs(Path.cwd(), 'chain')) - before
    return new


def _chain(monkeypatch, stops, overrides=None):
    """A run stopped at each of `stops` in turn, each stop resumed; the run folders and the last configs."""
    overrides = {**RESUME, **(overrides or {})}
    folders = [_train_until_stopped(monkeypatch, overrides, stops[0])]
    for stop in stops[1:]:
        folders.append(_train_until_stopped(monkeypatch, {}, stop, resume=folders[-1].name))
    conf = train({}, resume=folders[-1].name, writers='sqlite')
    return folders + [newest_run(Path.cwd(), 'chain')], conf


@pytest.fixture
def straight(project):
    """The run without stops: its folder and its final weights."""
    conf = train(dict(RESUME), name='straight', writers='sqlite')
    return run_dirs(project, 'straight')[0], _params(conf)


# Stops in every phase: mid-stretch, at the last step of an epoch, during a validation, during
# a sample mid-epoch, during the first sample after an epoch's end (its checkpoint saved), and
# two stops in a row.
STOPS = {
    'mid-stretch': [('step', 5)],
    'last step of the epoch': [('step', STEPS_PER_EPOCH)],
    'validation': [('valid', 3)],
    'sample mid-epoch': [('sample', 2)],
    'sample after the epoch end': [('sample', 3)],
    'two stops': [('step', 20), ('valid', 2)],
}
SLOW = pytest.mark.slow


@pytest.mark.parametrize('stops', [pytest.param(stops, id=name, marks=() if name == 'two stops' else SLOW)
                                   for name, stops in STOPS.items()])
def test_a_run_stopped_anywhere_resumes_exactly(project, monkeypatch, straight, stops):
    straight_dir, straight_params = straight
    folders, resumed = _chain(monkeypatch, stops)
    # every resumed run names its parent, and the parent is never written to after it stopped
    for parent, child in zip(folders, folders[1:]):
        assert yaml.safe_load((child / 'run.yaml').read_text())['load_run'] == parent.name
        assert min(s for s, _ in _curve(child, 'lr')) > max(checkpoint_steps(parent))

    # the same tokens: every optimizer step of the straight run once, and the same learning rate at each
    lr = [sv for run in folders for sv in _curve(run, 'lr')]
    assert lr == _curve(straight_dir, 'lr')
    # the same validations, whether or not one was cut short by the stop
    assert [sv for run in folders for sv in _curve(run, 'loss.valid')] == _curve(straight_dir, 'loss.valid')
    # and bit-identical weights
    final = _params(resumed)
    assert final.keys() == straight_params.keys()
    for k in final:
        assert torch.equal(final[k], straight_params[k]), k
    assert checkpoint_steps(folders[-1])[-1] == checkpoint_steps(straight_dir)[-1]


def test_a_stop_saves_where_it_stands_and_the_checkpoint_says_so(project, monkeypatch):
    run_dir = _train_until_stopped(monkeypatch, dict(RESUME), ('valid', 2))
    (step,) = checkpoint_steps(run_dir)
    state = torch.load(run_dir / 'checkpoints' / str(step) / 'training.pth', weights_only=True)
    # the first stretch's 16 steps are trained; its validation comes next
    assert state['position'] == {'epoch': 0, 'window': 16 * 8, 'phase': 'valid', 'tokens': step}
    assert step == 16 * 8 * 16


@pytest.mark.slow
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
    state = weights(find_checkpoint(run_dir))
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


@pytest.mark.slow
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
    weights(find_checkpoint(run_dir))
    torch.load(find_checkpoint(run_dir) / 'training.pth', weights_only=True)

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
    (['--resume', '{truncated}'], ['model.safetensors is truncated', 'no complete checkpoint before it']),
    (['--resume', '{run}', 'epochs=1'], ['has done 1 of epochs=1']),
    (['--resume', '{run}', 'transformer.n_layers=2'], ['transformer.n_layers=2 contradicts run',
                                                       'a resumed run keeps its model']),
]


def test_bad_resume_is_one_line(project, capsys):
    train({**RESUME, 'epochs': 1}, name='parent')
    (parent,) = run_dirs(project, 'parent')
    # a copy of the run whose model file is cut in half
    truncated = parent.parent / (parent.name + 'copy')
    shutil.copytree(parent, truncated)
    model = find_checkpoint(truncated) / 'model.safetensors'
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
        # refused before a run folder is written
        assert sorted(p.name for p in parent.parent.iterdir()) == before, extra


SCHEDULE = {**TINY, 'text': 'corpus.txt', 'inner_iterations': 1, 'sample_tokens': 2, 'learning_rate': 3e-3,
            'warmup_steps': 8 * 16 * 10, 'is_save_models': True, 'log_interval': 1}
FLOOR = 3e-3 / 10


def _lr(run_dir):
    return read_scalars(run_dir, 'lr')


@pytest.mark.slow
def test_more_epochs_or_another_batch_on_resume_keep_the_lr_continuous(project, monkeypatch):
    # stopped at the 40th of 66 steps, in the cosine
    parent = _train_until_stopped(monkeypatch, {**SCHEDULE, 'epochs': 2}, ('step', 40))
    before = [lr for _, lr in _lr(parent)]
    largest_change = max(abs(a - b) for a, b in zip(before[20:], before[21:]))

    for extra in ({'epochs': 3}, {'batch_size': 4}, {'seq_len': 12}, {'epochs': 3, 'batch_size': 16}):
        train(dict(extra), resume=parent.name, name='resumed', writers='sqlite')
        child = newest_run(project, 'resumed')
        after = [lr for _, lr in _lr(child)]
        # from where the parent stood, no jump at the resume point, down to the floor at the new last step
        assert abs(after[0] - before[-1]) <= 1.5 * largest_change, extra
        assert all(a >= b for a, b in zip(after, after[1:])), extra
        assert after[-1] == pytest.approx(FLOOR, rel=1e-9) and after[0] > FLOOR, extra
        if 'epochs' not in extra:
            # the same tokens as the parent's two epochs would have trained
            assert checkpoint_steps(child)[-1] == pytest.approx(2 * 33 * 8 * 16, rel=0.03), extra


def test_a_finished_schedule_stays_at_its_floor_when_resumed_for_more(project):
    train({**SCHEDULE, 'epochs': 1}, name='done', writers='sqlite')
    (parent,) = run_dirs(project, 'done')
    train({'epochs': 2}, resume=parent.name, writers='sqlite')
    child = newest_run(project, 'done')
    # labml_nn's cosine, unclamped, would climb back up from its floor
    assert [lr for _, lr in _lr(child)] == pytest.approx([FLOOR] * len(_lr(child)), rel=1e-9)


def test_the_learning_rate_and_warmup_given_to_resume_win(project, monkeypatch):
    parent = _train_until_stopped(monkeypatch, {**SCHEDULE, 'epochs': 2}, ('step', 20))
    # the parent's warm-up (10 steps, to 3e-3) is over; the new one (100 steps, to 1e-2) is not
    train({'learning_rate': 1e-2, 'warmup_steps': 8 * 16 * 100}, resume=parent.name, writers='sqlite')
    child = newest_run(project, 'chain')
    rates = [lr for _, lr in _lr(child)]
    assert all(a < b for a, b in zip(rates, rates[1:])) and rates[-1] < 1e-2
    # the new warm-up, at the tokens the run stands at
    assert rates[0] == pytest.approx(1e-8 + 1e-2 * 21 * 128 / (128 * 100), rel=1e-9)
    assert yaml.safe_load((child / 'configs.yaml').read_text())['learning_rate']['value'] == 1e-2


def newest_run(project, name):
    return max(run_dirs(project, name), key=lambda r: r.stat().st_mtime)


@pytest.mark.slow
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
    for extra, fragment in ((['tokenizer=bpe'], 'tokenizer=bpe contradicts run'),
                            (['transformer.d_model=64'], 'transformer.d_model=64 contradicts run')):
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


def test_a_muon_run_stopped_twice_resumes_exactly(project, monkeypatch):
    muon = {'optimizer.optimizer': 'Muon'}
    train({**RESUME, **muon}, name='straight', writers='sqlite')
    (straight_dir,) = run_dirs(project, 'straight')
    straight = torch.load(straight_dir / 'checkpoints' / str(checkpoint_steps(straight_dir)[-1]) / 'training.pth',
                          weights_only=True)
    folders, resumed = _chain(monkeypatch, [('step', 20), ('valid', 2)], overrides=muon)
    assert [sv for run in folders for sv in _curve(run, 'lr')] == _curve(straight_dir, 'lr')
    final = weights(folders[-1] / 'checkpoints' / str(checkpoint_steps(folders[-1])[-1]))
    expected = weights(straight_dir / 'checkpoints' / str(checkpoint_steps(straight_dir)[-1]))
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    # Muon's momenta were saved and came back
    assert straight['optimizer']['muon']['state']


def test_resume_warns_when_the_corpus_has_changed(project, capsys):
    train({**SCHEDULE, 'epochs': 1}, name='digest')
    (parent,) = run_dirs(project, 'digest')
    corpus = project / 'corpus.txt'
    text = corpus.read_text()
    warning = 'The corpus has changed since this checkpoint was saved'

    # the text it was trained on: no warning
    capsys.readouterr()
    train({'epochs': 2}, resume=parent.name)
    assert warning not in capsys.readouterr().out

    # another text of the same characters and the same length: the vocabulary and the split fit,
    # only the digest tells
    changed = text.replace('apples', 'selppa')
    assert set(changed) == set(text) and len(changed) == len(text) and changed != text
    corpus.write_text(changed)
    capsys.readouterr()
    train({'epochs': 2}, resume=parent.name)
    out = capsys.readouterr().out
    assert warning in out and 'corpus.txt' in out.split(warning)[1].splitlines()[0], out
