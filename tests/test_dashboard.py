"""
Training does not depend on the dashboard: with labml pointed at a dashboard that does not
answer, a run trains, saves its checkpoints, says once that the dashboard was not reached,
and exits (labml 0.4 alone would retry forever after training). `python -m
gpt_experiment.dashboard` tells its user where it is.
"""

import pytest
import re

from conftest import TINY, checkpoint_steps, run_cli, run_dirs, write_project
from dashboard_helpers import free_port, running_dashboard

# Each test starts the dashboard.
pytestmark = pytest.mark.slow


def test_a_run_exits_and_says_so_when_the_dashboard_is_not_reached(tmp_path, monkeypatch):
    project = write_project(tmp_path / 'project')
    # Nothing listens on this port; labml reads its `labml_server` environment variable.
    monkeypatch.setenv('labml_server', f'http://127.0.0.1:{free_port()}/api/v1')
    # Without the fix the process never exits and `run_cli` times out.
    result = run_cli(['text=corpus.txt', 'epochs=1', 'inner_iterations=1', 'sample_tokens=3',
                      *(f'{k}={v}' for k, v in TINY.items())], cwd=project, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [l for l in result.stdout.splitlines() if 'not reached' in l]
    assert len(lines) == 1, result.stdout[-3000:]
    assert 'Dashboard not reached at http://127.0.0.1:' in lines[0]
    assert 'Still updating labml server' not in result.stdout
    runs = run_dirs(project, 'gpt')
    assert len(runs) == 1 and checkpoint_steps(runs[0])
    # The summary has no dashboard line.
    assert 'best valid loss:' in result.stdout
    assert not re.search(r'^\s*dashboard:', result.stdout, re.M)


def test_dashboard_command_prints_its_url_and_answers(tmp_path):
    import urllib.request
    with running_dashboard(tmp_path / 'home', tmp_path / 'dashboard.log') as base:
        with urllib.request.urlopen(base + '/', timeout=10) as response:
            assert b'labml' in response.read()
        log = (tmp_path / 'dashboard.log').read_text()
        assert f'labml dashboard: {base}/' in log
        assert f'labml_server={base}/api/v1' in log
        assert f'dashboard data: {tmp_path / "home" / ".labml" / "app" / "data"}' in log


def test_a_run_is_claimed_while_it_trains_and_the_app_logs_into_its_data_folder(tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request
    from conftest import REPO_ROOT

    home = tmp_path / 'home'
    with running_dashboard(home, tmp_path / 'dashboard.log') as base:
        project = write_project(tmp_path / 'project')
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS='1', labml_server=f'{base}/api/v1')
        # long enough to be still training when we look
        proc = subprocess.Popen([sys.executable, '-m', 'gpt_experiment.main', 'text=corpus.txt', 'epochs=100000',
                                 *(f'{k}={v}' for k, v in TINY.items())], cwd=project, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        claimed = False
        try:
            deadline = time.time() + 120
            while time.time() < deadline and proc.poll() is None and not claimed:
                time.sleep(1)
                runs = run_dirs(project, 'gpt')
                if not runs:
                    continue
                try:
                    with urllib.request.urlopen(f'{base}/api/v1/run/{runs[0].name}', timeout=10) as response:
                        claimed = json.loads(response.read())['is_claimed']
                except OSError:
                    pass  # not known to the dashboard yet
            still_training = proc.poll() is None
        finally:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=60)
        assert claimed and still_training, proc.stderr
    # the app's own log is in its data folder, not in the folder it was started from
    assert (home / '.labml' / 'app' / 'data' / 'labml_app.log').is_file()
    assert not (home / 'labml_app.log').exists()
