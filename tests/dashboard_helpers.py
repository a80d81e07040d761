"""
A labml dashboard (labml-app) for tests: started with `python -m gpt_experiment.dashboard` on a
free loopback port, with its own home folder so that its data never mixes with the user's.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from conftest import REPO_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def dashboard_token(home: Path) -> str:
    """The write token of the dashboard started with `home` as its home folder."""
    return (home / '.labml' / 'app' / 'dashboard.token').read_text().strip()


@contextmanager
def running_dashboard(home: Path, log: Path):
    """
    Yield the dashboard's `http://127.0.0.1:<port>`; stop it (its process group) afterwards.
    It is ready when it prints its URL, and it answers at once then: the URL is printed only
    once the server answers.
    """
    from gpt_experiment.dashboard import reachable
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HOME=str(home), PYTHONPATH=str(REPO_ROOT))
    env.pop('GPT_DASHBOARD_TOKEN', None)
    with open(log, 'w') as out:
        proc = subprocess.Popen([sys.executable, '-m', 'gpt_experiment.dashboard', '--port', str(port)],
                                cwd=home, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f'http://127.0.0.1:{port}'
    try:
        deadline = time.time() + 60
        while f'labml dashboard: {base}/' not in log.read_text():
            assert proc.poll() is None, f'the dashboard exited:\n{log.read_text()}'
            assert time.time() < deadline, f'the dashboard did not say where it is:\n{log.read_text()}'
            time.sleep(0.1)
        assert reachable(base, timeout=5), f'the URL was printed before the server answered:\n{log.read_text()}'
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
