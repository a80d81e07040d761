"""
Two processes under torchrun (gloo, CPU) train the same model as one process on the same
global batch; only rank 0 writes checkpoints and tracks, and both ranks share one run uuid.
"""

import os
import subprocess
import sys

import torch

from gpt_experiment.train import main

from conftest import REPO_ROOT, TINY, checkpoint_steps, run_dirs, write_project

# seq_len 18 cuts the training text into 230 windows: 28 batches of 8 and one of 6, which
# all split evenly between two ranks.
DDP = {**TINY, 'seq_len': 18, 'text': 'corpus.txt', 'epochs': 1, 'inner_iterations': 1, 'sample_tokens': 2,
       'learning_rate': 3e-3, 'warmup_steps': 1024}

# Each rank saves the parameters it ended with.
DRIVER = r'''
import sys, torch
from gpt_experiment import distributed
from gpt_experiment.cli import overrides_from_args
from gpt_experiment.train import main
conf = main(overrides_from_args(sys.argv[1:]), name='ddp')
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
    single = main(dict(DDP), name='single').model.state_dict()
    assert ranks[0].keys() == single.keys()
    for k in single:
        assert torch.allclose(ranks[0][k], single[k], atol=1e-5, rtol=1e-4), (k, (ranks[0][k] - single[k]).abs().max())
    # rank 0 saved the model it ended with
    fresh = torch.load(runs[0] / 'checkpoints' / str(230 * 18) / 'model.pth', weights_only=True)
    assert all(torch.equal(fresh[k], ranks[0][k]) for k in fresh)


def test_ranks_split_every_batch_of_the_same_order():
    from gpt_experiment.batches import ShuffledWindows
    tokens = torch.arange(1000)

    def batches(rank, world_size, seed=5):
        loader = ShuffledWindows(tokens, batch_size=8, seq_len=10, generator=torch.Generator().manual_seed(seed),
                                 rank=rank, world_size=world_size)
        return [x for x, _ in loader], len(loader)

    (whole, n), (first, n0), (second, n1) = batches(0, 1), batches(0, 2), batches(1, 2)
    assert n == n0 == n1 == len(whole) == len(first)
    for w, a, b in zip(whole, first, second):
        # the last batch of 99 windows has 3: each rank takes one, the third is dropped
        assert a.shape[1] == b.shape[1] == w.shape[1] // 2
        assert torch.equal(torch.cat([a, b], dim=1), w[:, :2 * a.shape[1]])
    # the seed, not the global generator, sets the order
    torch.manual_seed(0)
    assert not torch.equal(batches(0, 1, seed=6)[0][0], whole[0])
