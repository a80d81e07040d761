"""
Training does not depend on the dashboard: with labml pointed at a dashboard that does not
answer, a run trains, saves its checkpoints, says once that the dashboard was not reached,
and exits (labml 0.4 alone would retry forever after training). `python -m
gpt_experiment.dashboard` tells its user where it is, once it answers there.

The dashboard's doors: a path that leaves the app's folder is a 404, however it is written; a
write without the dashboard's token is refused and changes nothing, while the run's writes,
which carry it, go through; a host beyond loopback needs a token; each failure to start is one
line. A run claims itself, gives its name the uuid's first characters, and keeps its chart on
its two losses as its series come. The tests that start a dashboard or train are slow; the launcher's refusals are not.
"""

import http.client
import json
import os
import socket
import stat
import sys
import time
import urllib.request
from urllib.parse import quote

import pytest
import re

from conftest import TINY, checkpoint_steps, run_cli, run_dirs, write_project
from dashboard_helpers import dashboard_token, free_port, running_dashboard
from gpt_experiment import dashboard


@pytest.mark.slow
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


@pytest.mark.slow
def test_dashboard_command_prints_its_url_once_it_answers(tmp_path):
    home = tmp_path / 'home'
    # `running_dashboard` waits for the URL line, not for the port, and asks the server at once.
    with running_dashboard(home, tmp_path / 'dashboard.log') as base:
        with urllib.request.urlopen(base + '/', timeout=10) as response:
            assert b'labml' in response.read()
        log = (tmp_path / 'dashboard.log').read_text()
        assert f'labml dashboard: {base}/' in log
        assert f'labml_server={base}/api/v1' in log
        assert f'dashboard data: {home / ".labml" / "app" / "data"}' in log
        # The token is the user's only: 0600 from its first byte, and never printed.
        token_file = home / '.labml' / 'app' / 'dashboard.token'
        assert f'write token in {token_file}' in log
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert dashboard_token(home) not in log


@pytest.mark.slow
def _get(base: str, path: str):
    """The app's JSON answer to `GET /api/v1/<path>`, or `None`."""
    try:
        with urllib.request.urlopen(f'{base}/api/v1/{path}', timeout=10) as response:
            return json.loads(response.read())
    except OSError:
        return None


def test_a_run_is_claimed_named_and_charted_while_it_trains_and_the_app_logs_into_its_data_folder(tmp_path):
    import signal
    import subprocess
    from conftest import REPO_ROOT

    home = tmp_path / 'home'
    with running_dashboard(home, tmp_path / 'dashboard.log') as base:
        project = write_project(tmp_path / 'project')
        # labml's own way to a dashboard, and to its token (which labml puts in the URL's query)
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS='1', labml_server=f'{base}/api/v1',
                   labml_token=dashboard_token(home))
        # long enough to be still training when we look
        proc = subprocess.Popen([sys.executable, '-m', 'gpt_experiment.main', 'text=corpus.txt', 'epochs=100000',
                                 *(f'{k}={v}' for k, v in TINY.items())], cwd=project, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        claimed = named = charted = False
        try:
            deadline = time.time() + 120
            while time.time() < deadline and proc.poll() is None and not (claimed and named and charted):
                time.sleep(1)
                runs = run_dirs(project, 'gpt')
                if not runs:
                    continue
                uuid = runs[0].name
                run = _get(base, f'run/{uuid}')
                if run is None:
                    continue  # not known to the dashboard yet
                claimed, named = run['is_claimed'], run['name'] == f'gpt · {uuid[:8]}'
                # its chart plots the losses, once the first validation has brought loss.valid
                names = [s['name'] for s in _get(base, f'metrics/{uuid}')['series']]
                charted = {'loss.train', 'loss.valid'} <= set(names) and \
                    _get(base, f'metrics/preferences/{uuid}')['series_preferences'] == dashboard.first_chart(names)
            still_training = proc.poll() is None
        finally:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=60)
        assert claimed and named and charted and still_training, proc.stderr
    # the app's own log is in its data folder, not in the folder it was started from
    assert (home / '.labml' / 'app' / 'data' / 'labml_app.log').is_file()
    assert not (home / 'labml_app.log').exists()


# ## The launcher's refusals: one line each, exit 2, nothing started

def _refused(argv, capsys) -> str:
    """`gpt-dashboard ARGV`'s one line, checked to be the whole of what it said."""
    assert dashboard.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == '' and err.count('\n') == 1 and err.startswith('error: '), (out, err)
    return err.strip()


@pytest.mark.parametrize('port, says', [('0', '--port 0: give the port'), ('70000', 'out of range'),
                                        ('-1', 'out of range'), ('abc', 'not a number')])
def test_a_port_the_dashboard_cannot_use_is_one_line(port, says, capsys):
    assert says in _refused(['--port', port], capsys)


def test_a_busy_port_is_one_line(capsys):
    with socket.socket() as busy:
        busy.bind(('127.0.0.1', 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = _refused(['--port', str(port)], capsys)
    assert line == f'error: cannot listen on 127.0.0.1:{port}: Address already in use'


@pytest.mark.parametrize('host', ['0.0.0.0', '::'])
def test_beyond_loopback_without_a_token_is_refused_with_the_tunnel_recipe(host, capsys, monkeypatch):
    monkeypatch.delenv(dashboard.TOKEN_ENV, raising=False)
    line = _refused(['--host', host, '--port', '5005'], capsys)
    assert '--token or GPT_DASHBOARD_TOKEN' in line
    assert line.endswith('ssh -L 5005:127.0.0.1:5005 user@host')


def test_a_token_that_could_be_guessed_is_refused(capsys, monkeypatch):
    monkeypatch.setenv(dashboard.TOKEN_ENV, 'secret')
    assert '--token: 16 to 256 of' in _refused(['--host', '0.0.0.0'], capsys)


def test_without_labml_app_the_dashboard_is_one_line(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, 'labml_app', None)  # what `find_spec` reports as not installed
    assert 'labml-app is not installed' in _refused([], capsys)


# ## The doors, one by one

UP = '/..' * 24  # more than enough to climb from the app's folder to /


def traversals(target: str):
    """Ways to write a path from the app's folder to `target` (an absolute path)."""
    rest = target.lstrip('/')
    return [
        UP + target,                                                   # plain
        '/css' + UP + target,                                          # from a folder of the app
        '/api/v1' + UP + target,                                       # from the API
        '/%2e%2e' * 24 + target,                                       # dots encoded
        '/%2E%2E' * 24 + target,                                       # ... in capitals
        '/.%2e' * 24 + target,                                         # ... one of them
        '/' + '..%2f' * 24 + rest,                                     # slashes encoded
        '/' + '%2e%2e%2f' * 24 + quote(rest, safe=''),                 # everything encoded
        '/%252e%252e' * 24 + target,                                   # dots encoded twice
        '/' + '%252e%252e%252f' * 24 + rest,                           # everything encoded twice
        '/' + '%25252e%25252e%25252f' * 24 + rest,                     # ... three times
        '/' + '..\\' * 24 + rest.replace('/', '\\'),                   # backslashes
        '/' + '..%5c' * 24 + rest.replace('/', '%5c'),                 # backslashes encoded
        '/' + '..%255c' * 24 + rest,                                   # ... twice
        '/./' + rest,                                                  # a dot segment
    ]


def test_paths_that_leave_the_folder_are_recognised():
    for path in traversals('/etc/passwd'):
        assert dashboard.leaves_folder(path), path
    for path in ['/', '/index.html', '/run/0123456789abcdef', '/api/v1/runs/null', '/css/..x', '/a%20b',
                 '/api/v1/run/abc?x=..']:
        assert not dashboard.leaves_folder(path.split('?')[0]), path


def test_a_run_finds_the_token_in_its_url_then_the_environment_then_the_file(tmp_path, monkeypatch):
    (tmp_path / 'dashboard.token').write_text('from-the-file-0123456789\n')
    monkeypatch.setattr(dashboard, 'token_file', lambda: tmp_path / 'dashboard.token')
    monkeypatch.delenv(dashboard.TOKEN_ENV, raising=False)
    in_url = 'http://127.0.0.1:5005/api/v1/track?labml_token=from-the-url-0123456&'
    assert dashboard.token_for(in_url) == 'from-the-url-0123456'
    assert dashboard.token_for('http://127.0.0.1:5005/api/v1/track?') == 'from-the-file-0123456789'
    assert dashboard.token_for('http://localhost:5005/api/v1/track?') == 'from-the-file-0123456789'
    # the file's token is this machine's dashboard's: never sent to another machine
    assert dashboard.token_for('http://example.org:5005/api/v1/track?') is None
    monkeypatch.setenv(dashboard.TOKEN_ENV, 'from-the-environment-0123')
    assert dashboard.token_for('http://127.0.0.1:5005/api/v1/track?') == 'from-the-environment-0123'
    # added to labml's URL as labml adds its own `labml_token`
    token = 'T' * 16
    assert dashboard.with_token('http://h:1/api/v1/track?', token) == f'http://h:1/api/v1/track?labml_token={token}&'


@pytest.fixture(scope='module')
def served(tmp_path_factory):
    """One dashboard for the doors' tests: `(base, token, home, secret file)`."""
    root = tmp_path_factory.mktemp('doors')
    secret = root / 'secret.txt'
    secret.write_text('the secret is 8f3c1d\n')
    with running_dashboard(root / 'home', root / 'dashboard.log') as base:
        yield base, dashboard_token(root / 'home'), root / 'home', secret


def request(base: str, method: str, path: str, body=None, headers=None):
    """`(status, body)` of a request sent as written: no client in between normalises the path."""
    host, port = base.rsplit('/', 1)[1].split(':')
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={'Content-Type': 'application/json', **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.slow
def test_paths_that_leave_the_app_folder_are_404_and_read_nothing(served):
    base, token, home, secret = served
    token_file = home / '.labml' / 'app' / 'dashboard.token'
    for target, content in [(str(secret), b'8f3c1d'), (str(token_file), token.encode())]:
        for path in traversals(target):
            status, body = request(base, 'GET', path)
            assert status == 404 and content not in body, (path, status, body[:200])
    # and the app's own files are still served
    status, body = request(base, 'GET', '/index.html')
    assert status == 200 and b'<html' in body


def _run(base, uuid):
    status, body = request(base, 'GET', f'/api/v1/run/{uuid}')
    return json.loads(body) if status == 200 else None


@pytest.mark.slow
def test_writes_without_the_token_are_refused_and_change_nothing(served):
    base, token, home, _ = served
    with_token = f'labml_token={token}'
    uuid, fake = 'a1' * 16, 'f0' * 16
    track = '/api/v1/track?run_uuid={}&labml_version=0.4.168'
    # The run's own writes, with the token, go through: it is created, then claimed.
    status, body = request(base, 'POST', track.format(uuid) + '&' + with_token,
                           [{'name': 'real run', 'time': time.time()}])
    assert status == 200 and json.loads(body)['errors'] == [], body
    assert _run(base, uuid)['name'] == 'real run'

    refused = [
        ('POST', track.format(fake), [{'name': 'fake run', 'time': time.time()}]),   # a fake run
        ('PUT', f'/api/v1/run/{uuid}/claim', {}),                                   # claim
        ('POST', f'/api/v1/run/{uuid}', {'name': 'renamed'}),                       # rename
        ('PUT', '/api/v1/runs', {'run_uuids': [uuid]}),                              # delete
        ('PUT', f'/api/v1/run/{fake}/add', {}),                                      # add a run to the list
        ('POST', f'/api/v1/metrics/preferences/{uuid}', {'series_preferences': []}), # the charts' settings
        ('POST', f'/api/v1/hyper_params/{uuid}', {}),                                # values sent back to the run
        ('POST', '/api/v1/auth/sign_up', {'name': 'x', 'email': 'x@x', 'password': 'x'}),
        ('DELETE', f'/api/v1/run/{uuid}', None),
    ]
    for method, path, body in refused:
        for extra in ['', '?labml_token=', '?labml_token=not-the-token-0123456']:  # none, empty, wrong
            joined = path + (extra if '?' not in path else extra.replace('?', '&'))
            status, answer = request(base, method, joined, body)
            assert status == 403, (method, joined, status, answer[:200])
    # ... and nothing changed
    assert _run(base, fake) is None
    run = _run(base, uuid)
    assert run['name'] == 'real run' and not run['is_claimed']

    # The run's claim, with the token, goes through; a delete without it still does not.
    status, body = request(base, 'PUT', f'/api/v1/run/{uuid}/claim?{with_token}', {})
    assert status == 200 and _run(base, uuid)['is_claimed']
    assert request(base, 'PUT', '/api/v1/runs', {'run_uuids': [uuid]})[0] == 403
    status, body = request(base, 'GET', '/api/v1/runs/null')
    assert status == 200 and uuid in [r['run_uuid'] for r in json.loads(body)['runs']]

    # Reads stay open, and so does the page's "who am I".
    assert request(base, 'GET', f'/api/v1/metrics/{uuid}')[0] == 200
    assert request(base, 'POST', '/api/v1/auth/user', {'device': {}})[0] == 200
    # The token goes no further than the doors: not in the app's log.
    assert token not in (home / '.labml' / 'app' / 'data' / 'labml_app.log').read_text()


@pytest.mark.slow
def test_a_name_that_is_not_loopback_is_refused_on_loopback(served):
    # a web page whose own host name was re-pointed at 127.0.0.1 ("DNS rebinding")
    base, token, home, _ = served
    port = base.rsplit(':', 1)[1]
    assert request(base, 'GET', '/api/v1/runs/null', headers={'Host': f'attacker.example:{port}'})[0] == 403
    for name in ['127.0.0.1', 'localhost', '[::1]']:
        assert request(base, 'GET', '/', headers={'Host': f'{name}:{port}'})[0] == 200, name


@pytest.mark.slow
def test_a_run_the_dashboard_would_refuse_is_told_before_it_trains(served, monkeypatch, capsys):
    base, token, home, _ = served
    dropped, given = [], []
    monkeypatch.setattr(dashboard.labml_glue, 'drop_writer', dropped.append)
    monkeypatch.setattr(dashboard.labml_glue, 'set_dashboard_url', given.append)
    monkeypatch.setattr(dashboard, 'token_file', lambda: home / 'elsewhere' / 'dashboard.token')  # another user's run
    monkeypatch.delenv(dashboard.TOKEN_ENV, raising=False)
    for url, says in [(f'{base}/api/v1/track?', 'takes runs only with its token'),
                      (f'{base}/api/v1/track?labml_token=not-the-token-0123456&',
                       'refused this run (wrong dashboard token)')]:
        monkeypatch.setattr(dashboard.labml_glue, 'configured_dashboard_url', lambda: url)
        assert dashboard.connect({'web_api'}) is None and dropped.pop() == 'web_api'
        assert says in capsys.readouterr().out
    # With the token, the run keeps its writer, and sends with the token in labml's URL.
    monkeypatch.setenv(dashboard.TOKEN_ENV, token)
    monkeypatch.setattr(dashboard.labml_glue, 'configured_dashboard_url', lambda: f'{base}/api/v1/track?')
    assert dashboard.connect({'web_api'}) == given[-1] == f'{base}/api/v1/track?labml_token={token}&' and not dropped


# ## What a run shows: its name with its uuid, its losses on its chart

def test_the_first_chart_plots_the_losses_by_their_places_in_the_apps_list():
    names = ['accuracy.train', 'accuracy.valid', 'grad_norm', 'loss.train', 'loss.valid', 'lr', 'tokens_per_second']
    assert dashboard.first_chart(names) == [-1, -1, -1, 0, 1, -1, -1]
    assert dashboard.first_chart(['grad_norm', 'loss.train', 'lr']) == [-1, 0, -1]
    assert dashboard.first_chart([]) == []


def test_the_listed_name_adds_the_uuid_once():
    uuid = '147f2928edad11f19c3602fc00000001'
    assert dashboard.listed_name('gpt', uuid) == 'gpt · 147f2928'
    assert dashboard.listed_name('gpt · 147f2928', uuid) == 'gpt · 147f2928'
    assert dashboard.listed_name('', uuid) == '147f2928'
    # at the end, with the last validation loss, which a later end replaces
    assert dashboard.listed_name('gpt', uuid, 1.63473) == 'gpt · 147f2928 · valid 1.6347'
    assert dashboard.listed_name('gpt · 147f2928', uuid, 1.63473) == 'gpt · 147f2928 · valid 1.6347'
    assert dashboard.listed_name('gpt · 147f2928 · valid 1.6347', uuid, 1.5) == 'gpt · 147f2928 · valid 1.5000'
    assert dashboard.listed_name('gpt · 147f2928 · valid 1.6347', uuid) == 'gpt · 147f2928'
    assert dashboard.listed_name('147f2928 · valid 2.0000', uuid, 1.5) == '147f2928 · valid 1.5000'
    # a name of the user's own that holds the separator stays as it was
    assert dashboard.listed_name('lr · 1e-3', uuid) == 'lr · 1e-3 · 147f2928'


@pytest.mark.slow
def test_the_chart_follows_the_series_as_they_come_and_the_comment_stays(served, monkeypatch):
    base, token, home, _ = served
    uuid = 'c3' * 16
    url = f'{base}/api/v1/track?labml_token={token}&'
    monkeypatch.setattr(dashboard, 'WATCH_SECONDS', 0.2)

    def send(names, **run):
        # what labml's sender posts (the app holds each answer for 3 s)
        track = {n: {'step': [1, 2], 'value': [3.0, 2.5]} for n in names}
        status, body = request(base, 'POST', f'/api/v1/track?run_uuid={uuid}&labml_version=0.4.168&labml_token={token}',
                               [{**run, 'time': time.time(), 'track': track}])
        assert status == 200 and json.loads(body)['errors'] == [], body

    def preferences():
        return json.loads(request(base, 'GET', f'/api/v1/metrics/preferences/{uuid}')[1])['series_preferences']

    def soon(check):
        deadline = time.time() + 30
        while not check():
            assert time.time() < deadline
            time.sleep(0.1)

    # The first report: the losses are not both there, and nothing is set.
    send(['loss.train', 'accuracy.train', 'lr', 'grad_norm', 'tokens_per_second'], name='gpt', comment='a note')
    dashboard.claim_soon(url, uuid)
    soon(lambda: _run(base, uuid)['name'] == f'gpt · {uuid[:8]}')
    run = _run(base, uuid)
    assert run['is_claimed'] and run['comment'] == 'a note'
    time.sleep(1)
    assert preferences() == []
    # The first validation: both losses, by their places
    send(['loss.valid', 'accuracy.valid'])
    soon(lambda: preferences() == [-1, -1, -1, 0, 1, -1, -1])
    # A series that comes later, listed before the losses, moves them: the preferences follow.
    send(['bits_per_byte'])
    soon(lambda: preferences() == [-1, -1, -1, -1, 0, 1, -1, -1])
    # At the end, once more: the same.
    dashboard._stop_watching(uuid)
    assert dashboard.present(url, uuid)
    assert preferences() == [-1, -1, -1, -1, 0, 1, -1, -1]
    run = _run(base, uuid)
    assert run['name'] == f'gpt · {uuid[:8]}' and run['comment'] == 'a note'
