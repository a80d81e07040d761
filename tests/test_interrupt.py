"""
Stops that never lose work: Ctrl-C and SIGTERM finish the step in progress, save a checkpoint
at that step and exit 130 or 143 in one line; `is_save_models=false` saves nothing; the
handlers in place before a run are back after it; a checkpoint is added every
`checkpoint_minutes`; a full disk or an unwritable `logs/` is one line.
"""

import errno
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import types

import pytest
import torch

import gpt_experiment.files as files
import gpt_experiment.trainer as trainer
from gpt_experiment.main import run
from gpt_experiment.runs import find_checkpoint
from gpt_experiment import train

from conftest import REPO_ROOT, TINY, checkpoint_steps, read_scalars, run_dirs, write_project, weights

ARGS = {**TINY, 'text': 'corpus.txt', 'inner_iterations': 1, 'sample_tokens': 2, 'log_interval': 5}


def _trained_steps(run_dir):
    db = run_dir / 'sqlite.db'
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(str(db)) as conn:
            return conn.execute("SELECT COUNT(*) FROM scalars WHERE indicator = 'loss.train'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _before_each_training_state(monkeypatch, action):
    """Call `action(path)` before a checkpoint's `training.pth` is written (the save is half done)."""
    real = files.write_durably

    def write_durably(path, write):
        if path.name == 'training.pth':
            action(path)
        return real(path, write)
    monkeypatch.setattr(files, 'write_durably', write_durably)


def _indicators(run_dir):
    with sqlite3.connect(str(run_dir / 'sqlite.db')) as conn:
        return {row[0] for row in conn.execute('SELECT DISTINCT indicator FROM scalars')}


def _stopped(project, args, sig, ready, status, line, poll=0.2):
    """
    Run `gpt-train ARGS` in `project`, send it `sig` once `ready(proc)` holds, and check that it
    ends with `status` and `line`, without a traceback.
    """
    env = {**os.environ, 'PYTHONPATH': str(REPO_ROOT), 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}
    proc = subprocess.Popen([sys.executable, '-m', 'gpt_experiment.main', *args], cwd=project,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not ready(proc):
            time.sleep(poll)
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == status, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == line
    assert 'Traceback' not in stderr


@pytest.mark.parametrize('sig, status, line', [(signal.SIGINT, 130, 'interrupted'),
                                               (signal.SIGTERM, 143, 'terminated')])
@pytest.mark.slow
def test_a_signal_saves_a_checkpoint_after_the_step_and_exits(tmp_path, sig, status, line):
    project = write_project(tmp_path)
    args = [f'{k}={v}' for k, v in ARGS.items()] + ['epochs=1000', 'log_interval=1', 'checkpoint_minutes=0']

    def training(proc):
        # training steps are being recorded
        runs = run_dirs(project, 'stop')
        return bool(runs) and _trained_steps(runs[0]) >= 3
    _stopped(project, [*args, '--name', 'stop'], sig, training, status, line)
    (run_dir,) = run_dirs(project, 'stop')
    # The newest checkpoint is the step it stopped at: the last one trained and reported.
    stopped = read_scalars(run_dir, 'loss.train')[-1][0]
    assert checkpoint_steps(run_dir)[-1] == stopped
    state = weights(find_checkpoint(run_dir))
    assert 'generator.projection.weight' in state
    assert 'loss' not in _indicators(run_dir)


def _loaded(pid: int, library: str) -> bool:
    """Whether process `pid` has mapped a shared library whose name holds `library` (Linux)."""
    try:
        return library in open(f'/proc/{pid}/maps').read()
    except OSError:
        return False


@pytest.mark.parametrize('sig, status, line', [(signal.SIGINT, 130, 'interrupted'),
                                               (signal.SIGTERM, 143, 'terminated')])
@pytest.mark.parametrize('when', ['importing torch', 'computing the configs'])
@pytest.mark.slow
def test_a_stop_before_training_is_one_line(tmp_path, when, sig, status, line):
    # torch's C extension imports numpy and swallows any error there, a KeyboardInterrupt too:
    # a Ctrl-C then was lost, and numpy left half imported failed the run later, in a traceback.
    project = write_project(tmp_path)
    started = []

    def ready(proc):
        # numpy's core library is mapped: numpy is being imported, which torch's import does;
        # the configs are computed a little later
        if not started and _loaded(proc.pid, '_multiarray_umath'):
            started.append(time.time())
        return bool(started) and time.time() >= started[0] + (1.5 if when == 'computing the configs' else 0)
    _stopped(project, [f'{k}={v}' for k, v in ARGS.items()], sig, ready, status, line, poll=0.005)


def _signal_at_step(n, sig):
    """`F.cross_entropy` that sends `sig` to this process at the `n`th training step."""
    real = torch.nn.functional.cross_entropy
    calls = []

    def cross_entropy(*args, **kwargs):
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) == n:
                os.kill(os.getpid(), sig)
        return real(*args, **kwargs)
    return cross_entropy


def test_a_stop_leaves_nothing_behind(project, monkeypatch, capsys):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    # a run that ends normally
    train({**ARGS, 'epochs': 1}, name='whole', writers='sqlite')
    assert {s: signal.getsignal(s) for s in before} == before

    # one stopped mid-stretch (step 7, two steps after a report), with is_save_models=false
    monkeypatch.setattr(torch.nn.functional, 'cross_entropy', _signal_at_step(7, signal.SIGINT))
    args = [f'{k}={v}' for k, v in ARGS.items()] + ['epochs=3', 'is_save_models=false', '--name', 'nosave',
                                                     '--writers', 'sqlite']
    assert run(args) == 130
    (run_dir,) = run_dirs(project, 'nosave')
    assert checkpoint_steps(run_dir) == []
    # the last two steps are reported under their names, not as bare `loss` and `accuracy`
    assert [s for s, _ in read_scalars(run_dir, 'loss.train')][-1] == 7 * 8 * 16
    indicators = _indicators(run_dir)
    assert {'loss.train', 'accuracy.train'} <= indicators and not {'loss', 'accuracy'} & indicators
    # and labml's handler from the loop is not left installed
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_checkpoint_every_checkpoint_minutes(project, monkeypatch):
    # A clock that moves a minute per training step.
    clock = [0.0]
    real = torch.nn.functional.cross_entropy

    def cross_entropy(*args, **kwargs):
        if torch.is_grad_enabled():
            clock[0] += 60
        return real(*args, **kwargs)
    monkeypatch.setattr(torch.nn.functional, 'cross_entropy', cross_entropy)
    monkeypatch.setattr(trainer, 'time', types.SimpleNamespace(monotonic=lambda: clock[0],
                                                               perf_counter=time.perf_counter))

    train({**ARGS, 'epochs': 1, 'checkpoint_minutes': 3, 'keep_checkpoints': 0}, name='timed', writers='sqlite')
    steps = checkpoint_steps(run_dirs(project, 'timed')[0])
    # every third step of 128 tokens, and the end of the epoch
    assert steps[:-1] == [3 * 128 * k for k in range(1, len(steps))] and len(steps) >= 10
    train({**ARGS, 'epochs': 1, 'checkpoint_minutes': 0}, name='epochs', writers='sqlite')
    assert checkpoint_steps(run_dirs(project, 'epochs')[0]) == [steps[-1]]


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(project, monkeypatch, capsys):
    saves = []

    def second_is_full(path):
        saves.append(path)
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, 'No space left on device', str(path))
    _before_each_training_state(monkeypatch, second_is_full)
    args = [f'{k}={v}' for k, v in ARGS.items()] + ['epochs=3', '--name', 'full', '--writers', 'sqlite']
    capsys.readouterr()
    assert run(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    (run_dir,) = run_dirs(project, 'full')
    (first,) = checkpoint_steps(run_dir)
    assert len(err) == 1 and err[0].startswith(f'error: cannot write checkpoint {2 * first} (')
    assert 'training.pth: No space left on device); the last complete checkpoint is ' + str(first) in err[0]
    assert not list(run_dir.glob('.checkpoint-*'))
    torch.load(find_checkpoint(run_dir) / 'training.pth', weights_only=True)


def test_unwritable_logs_and_names_outside_logs_are_one_line(project, capsys):
    for name in ('../x', '/abs', '.hidden', 'a/b', 'two\nlines', 'tab\there'):
        capsys.readouterr()
        assert run(['text=corpus.txt', '--name', name]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f'error: --name must be a plain name (a folder under logs/), got {name!r}']
    assert not (project.parent / 'x').exists() and not (project / 'logs').exists()
    # logs/ that cannot be written (here a file in its place)
    (project / 'logs').write_text('')
    args = [f'{k}={v}' for k, v in ARGS.items()] + ['epochs=1', '--writers', 'sqlite']
    assert run(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: cannot write ') and 'logs' in err[0], err


def test_cache_leftovers_of_gone_writers_are_removed(project, monkeypatch):
    from gpt_experiment import corpus
    # a character corpus that goes through the token cache
    monkeypatch.setattr(corpus, 'IN_MEMORY_BYTES', 0)
    cache = project / 'corpus.txt.cache'
    cache.mkdir()
    gone = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    dead = cache / f'training-x.u16.{int(gone.stdout)}@{socket.gethostname()}.tmp'
    alive = cache / f'training-y.u16.{os.getpid()}@{socket.gethostname()}.tmp'
    elsewhere = cache / f'training-z.u16.{int(gone.stdout)}@another-machine.tmp'
    for f in (dead, alive, elsewhere):
        f.write_bytes(b'half')
    corpus.load(corpus.source(project / 'corpus.txt'), None, seq_len=16)
    # the one whose writer is gone goes; one being written, or written on another machine, stays;
    # the cache written now left no temporary file of its own
    assert sorted(cache.glob('*.tmp')) == sorted([alive, elsewhere])


@pytest.mark.slow
def test_a_full_disk_under_the_tracker_is_one_line(project, monkeypatch, capsys):
    # labml's sqlite writer, made to fail as it does on a full disk
    from labml.internal.tracker.writers import sqlite as labml_sqlite
    real, writes = labml_sqlite.Writer.write, []

    def write(self, **kwargs):
        writes.append(1)
        if len(writes) > 3:
            raise sqlite3.OperationalError('database or disk is full')
        return real(self, **kwargs)
    monkeypatch.setattr(labml_sqlite.Writer, 'write', write)
    args = [f'{k}={v}' for k, v in ARGS.items()] + ['epochs=2', '--name', 'fulldb', '--writers', 'sqlite']
    capsys.readouterr()
    assert run(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: cannot write the run's sqlite.db: database or disk is full"]


def _wait_for(condition, proc, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None and not condition():
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    assert condition()


@pytest.mark.slow
def test_sigterm_during_validation_saves_and_exits_143_within_seconds(tmp_path):
    """
    A validation split long enough to validate for a minute: SIGTERM during it (what `docker
    stop` sends, before its SIGKILL ten seconds later) stops at the next validation batch.
    """
    project = write_project(tmp_path)
    from conftest import CORPUS
    (project / 'valid.txt').write_text(CORPUS * 300, encoding='utf-8')
    args = [f'{k}={v}' for k, v in ARGS.items()] + ['valid_text=valid.txt', 'epochs=3', 'log_interval=1000']
    proc = subprocess.Popen([sys.executable, '-m', 'gpt_experiment.main', *args, '--name', 'valid'], cwd=project,
                            env={**os.environ, 'PYTHONPATH': str(REPO_ROOT), 'OMP_NUM_THREADS': '1'},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # the first stretch (the whole epoch) is reported when its training ends; validation starts
        _wait_for(lambda: run_dirs(project, 'valid') and _trained_steps(run_dirs(project, 'valid')[0]) >= 1, proc)
        time.sleep(1)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 143 and stderr.strip().splitlines()[-1] == 'terminated', stderr[-2000:]
    assert took < 5, took
    (run_dir,) = run_dirs(project, 'valid')
    # the checkpoint of where it stood: the epoch trained, its validation still to do
    (step,) = checkpoint_steps(run_dir)
    state = torch.load(run_dir / 'checkpoints' / str(step) / 'training.pth', weights_only=True)
    assert state['position']['phase'] == 'valid' and state['position']['epoch'] == 0
    assert not read_scalars(run_dir, 'loss.valid')


@pytest.mark.slow
def test_kill_9_after_a_timed_checkpoint_resumes_exactly(tmp_path, monkeypatch):
    project = write_project(tmp_path)
    args = {**ARGS, 'transformer.dropout': 0.1, 'epochs': 2, 'seed': 3, 'inner_iterations': 2}
    cli = [f'{k}={v}' for k, v in args.items()]
    # a checkpoint every few steps (about 30 ms)
    proc = subprocess.Popen([sys.executable, '-m', 'gpt_experiment.main', *cli, 'checkpoint_minutes=0.0005',
                             '--name', 'killed', '--writers', 'sqlite'], cwd=project,
                            env={**os.environ, 'PYTHONPATH': str(REPO_ROOT), 'OMP_NUM_THREADS': '1'},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    epoch = 33 * 8 * 16
    try:
        _wait_for(lambda: run_dirs(project, 'killed') and any(
            epoch < s < 2 * epoch - 800 for s in checkpoint_steps(run_dirs(project, 'killed')[0])), proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    (run_dir,) = run_dirs(project, 'killed')
    # the newest checkpoint is a timed one in the second epoch, not at an end of an epoch
    assert checkpoint_steps(run_dir)[-1] % epoch

    # the same threads as the killed process, so that the arithmetic is the same
    monkeypatch.chdir(project)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        resumed = train({}, resume=run_dir.name, writers='sqlite')
        straight = train(dict(args), name='straight', writers='sqlite')
    finally:
        torch.set_num_threads(threads)
    a, b = resumed.model.state_dict(), straight.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_out_of_memory_is_one_line_that_names_a_micro_batch_and_keeps_the_checkpoint(project, monkeypatch, capsys):
    from gpt_experiment.model import GPT
    real, calls = GPT.forward, []

    def forward(self, x):
        if torch.is_grad_enabled():
            calls.append(1)
            # the 40th training step, in the second epoch
            if len(calls) == 40:
                raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 20.00 GiB')
        return real(self, x)
    monkeypatch.setattr(GPT, 'forward', forward)
    args = [f'{k}={v}' for k, v in ARGS.items()] + ['epochs=3', '--name', 'oom', '--writers', 'sqlite']
    capsys.readouterr()
    assert run(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['error: out of memory in a forward and backward pass of 8 windows; try micro_batch_size=4']
    (run_dir,) = run_dirs(project, 'oom')
    # the first epoch's checkpoint, whole
    (step,) = checkpoint_steps(run_dir)
    assert weights(find_checkpoint(run_dir)) and step == 259 * 16


def test_the_sigterm_that_follows_a_lost_rank_does_not_cut_its_checkpoint_short(project, monkeypatch, capsys):
    """
    When a rank dies, torchrun sends SIGTERM to the others, which may come while rank 0 saves
    what it stands at: the checkpoint is still whole, and the run ends on the lost rank's line.
    """
    import gpt_experiment.distributed as distributed
    from gpt_experiment.model import GPT
    monkeypatch.setattr(distributed, 'lost_a_rank', lambda e: 'Connection closed by peer' in str(e))
    real_forward, calls = GPT.forward, []

    def forward(self, x):
        if torch.is_grad_enabled():
            calls.append(1)
            # the 10th training step's collective fails: the other process is gone
            if len(calls) == 10:
                raise RuntimeError('[gloo] Connection closed by peer [127.0.0.1]:4242')
        return real_forward(self, x)
    monkeypatch.setattr(GPT, 'forward', forward)
    # torchrun's SIGTERM, in the middle of the save
    _before_each_training_state(monkeypatch, lambda path: os.kill(os.getpid(), signal.SIGTERM))
    args = [f'{k}={v}' for k, v in ARGS.items()] + ['epochs=3', '--name', 'lost', '--writers', 'sqlite']
    capsys.readouterr()
    assert run(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: another process of the run is gone (')
    (run_dir,) = run_dirs(project, 'lost')
    assert err[0].endswith(f'saved a checkpoint at step {9 * 8 * 16:,}')
    assert checkpoint_steps(run_dir) == [9 * 8 * 16] and weights(find_checkpoint(run_dir))
