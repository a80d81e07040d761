"""
Training does not depend on the dashboard: with labml pointed at a dashboard that does not
answer, a run trains, saves its checkpoints, says once that the dashboard was not reached,
and exits (labml 0.4 alone would retry forever after training). `python -m
gpt_experiment.dashboard` tells its user where it is.
"""

import re

from conftest import TINY, checkpoint_steps, run_cli, run_dirs, write_project
from dashboard_helpers import free_port, running_dashboard


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
