"""
Ctrl-C during training: the run finishes the step in progress, saves a checkpoint of the
model at that step, and exits with status 130 and one line, with no traceback.
"""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import torch

from conftest import REPO_ROOT, TINY, checkpoint_steps, run_dirs, write_project


def _trained_steps(run_dir):
    db = run_dir / 'sqlite.db'
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(str(db)) as conn:
            return conn.execute("SELECT COUNT(*) FROM scalars WHERE indicator = 'loss.train'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_ctrl_c_saves_a_checkpoint_after_the_step_and_exits_130(tmp_path):
    project = write_project(tmp_path)
    args = [f'{k}={v}' for k, v in TINY.items()] + ['text=corpus.txt', 'epochs=1000', 'log_interval=1',
                                                     'is_save_models=false']
    env = {**os.environ, 'PYTHONPATH': str(REPO_ROOT), 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}
    proc = subprocess.Popen([sys.executable, '-m', 'gpt_experiment.main', *args, '--name', 'ctrlc'], cwd=project,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # Wait until training steps are being recorded, then press Ctrl-C once.
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            runs = run_dirs(project, 'ctrlc')
            if runs and _trained_steps(runs[0]) >= 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()

    assert proc.returncode == 130
    assert stderr.strip().splitlines()[-1] == 'interrupted'
    assert 'Traceback' not in stderr
    # With periodic checkpoints off, the one checkpoint is the one Ctrl-C wrote.
    steps = checkpoint_steps(run_dirs(project, 'ctrlc')[0])
    assert len(steps) == 1 and steps[0] > 0
    # Whole windows only (an epoch's last batch may be partial, so not whole batches).
    assert steps[0] % TINY['seq_len'] == 0
    state = torch.load(run_dirs(project, 'ctrlc')[0] / 'checkpoints' / str(steps[0]) / 'model.pth',
                       weights_only=True)
    assert 'generator.projection.weight' in state
