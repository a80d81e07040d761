"""
Two processes under torchrun (gloo, CPU) train the same model as one process on the same
global batch; only rank 0 writes checkpoints and tracks, and both ranks share one run uuid.
"""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gpt_experiment import train

from conftest import REPO_ROOT, TINY, checkpoint_steps, read_scalars, run_dirs, weights, write_project

# Every test starts torchrun with two processes.
pytestmark = pytest.mark.slow

# seq_len 18 cuts the training text into 230 windows: 28 batches of 8 and one of 6, which
# all split evenly between two ranks.
DDP = {**TINY, 'seq_len': 18, 'text': 'corpus.txt', 'epochs': 1, 'inner_iterations': 1, 'sample_tokens': 2,
       'learning_rate': 3e-3, 'warmup_steps': 1024}

# Each rank saves the parameters it ended with.
DRIVER = r'''
import sys, torch
from gpt_experiment import distributed
from gpt_experiment.overrides import overrides_from_args
from gpt_experiment import train
conf = train(overrides_from_args(sys.argv[1:]), name='ddp')
torch.save(conf.model.state_dict(), f'rank{distributed.world().rank}.pth')
distributed.teardown()
'''


def test_two_processes_match_one(tmp_path, monkeypatch):
    project = write_project(tmp_path / 'project')
    (project / 'driver.py').write_text(DRIVER, encoding='utf-8')
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS='1')
    result = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                             'driver.py', *[f'{k}={v}' for k, v in DDP.items()]],
                            cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    ranks = [torch.load(project / f'rank{r}.pth', weights_only=True) for r in (0, 1)]
    for k in ranks[0]:
        assert torch.equal(ranks[0][k], ranks[1][k]), k

    # one uuid, a folder per rank; only rank 0 tracks and saves
    runs = run_dirs(project, 'ddp')
    assert len(runs) == 2
    uuid = runs[0].name.split('.')[0]
    assert [r.name for r in runs] == [f'{uuid}.0', f'{uuid}.1']
    assert checkpoint_steps(runs[0]) == [230 * 18]
    assert checkpoint_steps(runs[1]) == []
    assert (runs[0] / 'sqlite.db').is_file() and not (runs[1] / 'sqlite.db').exists()

    monkeypatch.chdir(project)
    single = train(dict(DDP), name='single').model.state_dict()
    assert ranks[0].keys() == single.keys()
    for k in single:
        assert torch.allclose(ranks[0][k], single[k], atol=1e-5, rtol=1e-4), (k, (ranks[0][k] - single[k]).abs().max())
    # rank 0 saved the model it ended with
    fresh = weights(runs[0] / 'checkpoints' / str(230 * 18))
    assert all(torch.equal(fresh[k], ranks[0][k]) for k in fresh)


def test_ranks_split_every_batch_of_the_same_order():
    from gpt_experiment.corpus import ShuffledWindows
    tokens = torch.arange(1000)

    def batches(rank, world_size, seed=5):
        loader = ShuffledWindows(tokens, batch_size=8, seq_len=10, seed=seed, rank=rank, world_size=world_size)
        return [x for x, _, _ in loader.epoch(0)], len(loader)

    (whole, n), (first, n0), (second, n1) = batches(0, 1), batches(0, 2), batches(1, 2)
    assert n == n0 == n1 == len(whole) == len(first)
    for w, a, b in zip(whole, first, second):
        # the last batch of 99 windows has 3: each rank takes one, the third is dropped
        assert a.shape[1] == b.shape[1] == w.shape[1] // 2
        assert torch.equal(torch.cat([a, b], dim=1), w[:, :2 * a.shape[1]])
    # the seed, not the global generator, sets the order
    torch.manual_seed(0)
    assert not torch.equal(batches(0, 1, seed=6)[0][0], whole[0])


# A rank that says where it is (its pid, for signals) and how it ended (its status and step).
STOPPED_DRIVER = r'''
import os, sys
from labml import tracker
from gpt_experiment.main import run

rank = os.environ['RANK']
open(f'pid{rank}', 'w').write(str(os.getpid()))
status = run(sys.argv[1:])
open(f'ended{rank}', 'w').write(f'{status} {tracker.get_global_step()}')
sys.exit(status)
'''


def _wait_for(condition, seconds, proc):
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


@pytest.mark.parametrize('target, sig', [('torchrun-group', signal.SIGINT), ('torchrun', signal.SIGTERM),
                                         ('rank0', signal.SIGINT), ('ranks', signal.SIGTERM)])
def test_a_stop_under_torchrun_stops_every_rank_at_the_same_step(tmp_path, target, sig):
    project = write_project(tmp_path / 'project')
    (project / 'driver.py').write_text(STOPPED_DRIVER, encoding='utf-8')
    args = [f'{k}={v}' for k, v in {**DDP, 'epochs': 1000, 'log_interval': 1, 'checkpoint_minutes': 0}.items()]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS='1')
    # its own process group, as a terminal's foreground job
    proc = subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                             'driver.py', *args, '--name', 'stop', '--writers', 'sqlite'], cwd=project, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert _wait_for(lambda: (runs := run_dirs(project, 'stop')) and len(read_scalars_safe(runs[0])) >= 3,
                         240, proc), proc.stderr.read()[-3000:] if proc.poll() is not None else 'no steps'
        pids = [int((project / f'pid{r}').read_text()) for r in (0, 1)]
        if target == 'torchrun-group':
            os.killpg(proc.pid, sig)
        elif target == 'torchrun':
            os.kill(proc.pid, sig)
        else:
            for r in ((0, 1) if target == 'ranks' else (int(target[-1]),)):
                os.kill(pids[r], sig)
        sent = time.time()
        _, stderr = proc.communicate(timeout=60)
        assert time.time() - sent < 30, stderr[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    # every rank stopped after the same step, with the signal's status, and nothing hung
    ended = [(project / f'ended{r}').read_text().split() for r in (0, 1)]
    assert ended[0][1] == ended[1][1], ended
    assert {e[0] for e in ended} <= {'130', '143'}
    # rank 0 saved the step it stopped at; rank 1 saved nothing
    rank0, rank1 = run_dirs(project, 'stop')
    assert checkpoint_steps(rank0)[-1] == int(ended[0][1]) and checkpoint_steps(rank1) == []


def read_scalars_safe(run_dir):
    try:
        return read_scalars(run_dir, 'loss.train')
    except (AssertionError, sqlite3.Error):
        return []


def test_two_nodes_on_loopback_match_one_process(tmp_path, monkeypatch):
    # Two "machines", each a torchrun of one process, meeting at a c10d rendezvous on loopback.
    project = write_project(tmp_path / 'project')
    (project / 'driver.py').write_text(DRIVER, encoding='utf-8')
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS='1')
    nodes = [subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--nnodes=2', f'--node_rank={r}',
                               '--nproc_per_node=1', '--rdzv-backend=c10d', f'--rdzv-endpoint=127.0.0.1:{port}',
                               '--rdzv-id=loopback', 'driver.py', *[f'{k}={v}' for k, v in DDP.items()]],
                              cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    try:
        errors = [node.communicate(timeout=300)[1] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [n.returncode for n in nodes] == [0, 0], [e[-2000:] for e in errors]

    ranks = [torch.load(project / f'rank{r}.pth', weights_only=True) for r in (0, 1)]
    monkeypatch.chdir(project)
    single = train(dict(DDP), name='single').model.state_dict()
    for k in single:
        assert torch.equal(ranks[0][k], ranks[1][k]), k
        assert torch.allclose(ranks[0][k], single[k], atol=1e-5, rtol=1e-4), (k, (ranks[0][k] - single[k]).abs().max())
    # one run: rank 0 of the two saved it
    assert [r.name.split('.')[1] for r in run_dirs(project, 'ddp')] == ['0', '1']
    assert checkpoint_steps(run_dirs(project, 'ddp')[0]) == [230 * 18]


def _ranks(launcher_pid):
    """`{rank: pid}` of the workers a launcher started (read from /proc)."""
    found = {}
    children = Path(f'/proc/{launcher_pid}/task/{launcher_pid}/children').read_text().split()
    for pid in map(int, children):
        try:
            env = dict(kv.split('=', 1) for kv in Path(f'/proc/{pid}/environ').read_text().split('\0') if '=' in kv)
        except OSError:
            continue
        if 'RANK' in env:
            found[int(env['RANK'])] = pid
    return found


@pytest.mark.parametrize('kill', ['launcher', 'rank1'])
def test_gpt_train_starts_the_ranks_and_ends_each_stop_in_one_line(tmp_path, kill):
    """
    `gpt-train --nproc-per-node 2`: SIGTERM to it (docker stop) is rank 0's checkpoint, one line
    and 143, not torchrun's traceback and 1; `kill -9` of a rank leaves rank 0's replica saved.
    """
    project = write_project(tmp_path / 'project')
    args = [f'{k}={v}' for k, v in {**DDP, 'epochs': 1000, 'log_interval': 1, 'checkpoint_minutes': 0}.items()]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS='1')
    proc = subprocess.Popen([sys.executable, '-m', 'gpt_experiment.main', '--nproc-per-node', '2', *args,
                             '--name', 'ddp', '--writers', 'sqlite'], cwd=project, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(lambda: (runs := run_dirs(project, 'ddp')) and len(read_scalars_safe(runs[0])) >= 3,
                         240, proc), proc.stderr.read()[-3000:] if proc.poll() is not None else 'no steps'
        if kill == 'launcher':
            proc.send_signal(signal.SIGTERM)
        else:
            os.kill(_ranks(proc.pid)[1], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = stderr.strip().splitlines()
    assert 'Traceback' not in stderr, stderr[-3000:]
    if kill == 'launcher':
        assert proc.returncode == 143 and lines == ['terminated']
    else:
        # rank 0's line (it heard of the loss from gloo, or was stopped by the launcher), then the launcher's
        assert proc.returncode == 2 and len(lines) == 2, lines
        assert lines[0] == 'terminated' or lines[0].startswith('error: another process of the run is gone (')
        assert lines[1] == 'error: rank 1 died (SIGKILL); the others stopped, rank 0 saving a checkpoint'
    rank0 = run_dirs(project, 'ddp')[0]
    assert rank0.name.endswith('.0') and checkpoint_steps(rank0)
