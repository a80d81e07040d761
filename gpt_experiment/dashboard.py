"""
# The labml dashboard, locally

```
python -m gpt_experiment.dashboard [--host 127.0.0.1] [--port 5005]
```

starts labml's own web app ([labml-app](https://pypi.org/project/labml-app/) 0.0.102, the last
release that keeps its runs in local files) in the foreground, as `labml app-server` does, bound
to loopback unless asked otherwise. Runs show up there live when labml is told where it is,
either in `.labml.yaml`

```yaml
web_api: http://127.0.0.1:5005/api/v1/track?
web_api_open_browser: false
```

or with labml's environment variable `labml_server=http://127.0.0.1:5005/api/v1`.

The app keeps what it is sent, and its own log `labml_app.log`, under `~/.labml/app/data/`
(labml's configuration folder). Its run page says "This run will be deleted in 12 hours. Click
Claim" on runs nobody claimed: only the app's clean-up script (`labml_app/scripts/clean_ups.py`,
never started by the server) deletes runs, those not claimed and idle for 24 hours. We claim
every run as soon as the dashboard knows it, as the Claim button does, so it is in the local
user's runs list while it trains; and the run itself is always in `logs/`.

The other half of this module keeps training independent of the dashboard. labml 0.4 sends to
the dashboard from a thread that retries forever and that the interpreter waits for, so with
no dashboard answering a finished run never exits. So we

* look for the dashboard before the run starts, and train without the `web_api` writer when
  nobody answers;
* make labml's sender thread a daemon, and after training wait for it only while the dashboard
  answers (at most `FLUSH_SECONDS`), then say in one line that it was not reached.
"""

import importlib.util
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Optional, Set
from urllib.parse import urlsplit

from labml import logger
from labml.logger import Text

from . import commands, labml_glue
from .errors import UserError

DEFAULT_HOST = '127.0.0.1'
DEFAULT_PORT = 5005
# How long we wait, after training, for a dashboard that answers to take the last updates;
# the app holds every update request for 3 seconds.
FLUSH_SECONDS = 30
# How long a dashboard has to answer a probe
PROBE_SECONDS = 2


def data_folder():
    """Where the app keeps the runs it was sent: `~/.labml/app/data`."""
    return labml_glue.app_folder() / 'data'


def api_url(host: str, port: int) -> str:
    """The value of `labml_server` for a dashboard at `host:port`."""
    return f'http://{host}:{port}/api/v1'


def app_url(url: str) -> str:
    """`http://host:port` of a `web_api` URL."""
    parts = urlsplit(url)
    return f'{parts.scheme}://{parts.netloc}'


def reachable(url: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether anything answers HTTP at the dashboard's address (any status counts)."""
    try:
        urllib.request.urlopen(app_url(url) + '/', timeout=timeout).close()
        return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def connect(writers: Set[str]) -> Optional[str]:
    """
    After `experiment.create` and before `experiment.start`: keep the `web_api` writer only
    when a dashboard is configured and answers. Returns its URL, or `None`.
    """
    if 'web_api' not in writers:
        return None
    url = labml_glue.configured_dashboard_url()
    if url is not None and not reachable(url):
        logger.log(f'Dashboard not reached at {app_url(url)}; training without it.', Text.warning)
        url = None
    if url is None:
        labml_glue.drop_writer('web_api')
        return None
    # The run starts with labml's sender thread a daemon (`labml_glue.start`): with the
    # dashboard gone, the interpreter would wait for its retries forever. `finish` waits for
    # it instead, for a bounded time.
    return url


def finish(url: Optional[str], run_uuid: str) -> Optional[str]:
    """
    After training: let labml's sender deliver the last updates while the dashboard answers,
    then claim the run (again, in case the claim at the start did not get through). Returns the run's page, or `None` (with one line) when not reached.
    """
    if url is None:
        return None
    thread = labml_glue.dashboard_sender_thread()
    if thread is not None and reachable(url):
        thread.join(FLUSH_SECONDS)
    if thread is None or thread.is_alive() or thread.errored or not reachable(url):
        logger.log(f'Dashboard not reached at {app_url(url)}; the run is in logs/ only.', Text.warning)
        return None
    claim(url, run_uuid)
    return f'{app_url(url)}/run/{run_uuid}'


def claim_soon(url: Optional[str], run_uuid: str):
    """
    At the start of training: claim the run as soon as the dashboard knows it (labml's sender
    creates it there with its first update, from its own thread), retrying from a daemon thread
    so that training never waits for it.
    """
    if url is None:
        return

    def keep_trying():
        deadline = time.time() + FLUSH_SECONDS
        while not claim(url, run_uuid) and time.time() < deadline:
            time.sleep(0.5)

    threading.Thread(target=keep_trying, name='claim run', daemon=True).start()


def claim(url: str, run_uuid: str) -> bool:
    """Claim a run, as the run page's Claim button does, so that no clean-up deletes it."""
    req = urllib.request.Request(f'{app_url(url)}/api/v1/run/{run_uuid}/claim', data=b'{}', method='PUT',
                                 headers={'Content-Type': 'application/json'})
    try:
        with urllib.request.urlopen(req, timeout=PROBE_SECONDS * 5) as response:
            return bool(json.loads(response.read().decode('utf-8')).get('is_successful'))
    except (OSError, ValueError):
        return False


@commands.command
def main(argv=None) -> int:
    """`gpt-dashboard` and `python -m gpt_experiment.dashboard`: the app in the foreground."""
    parser = commands.Parser(prog='gpt-dashboard', description="Start labml's dashboard (labml-app) in the foreground.")
    parser.add_argument('--host', default=DEFAULT_HOST, help='address to bind (default: loopback only)')
    parser.add_argument('--port', type=int, default=DEFAULT_PORT, help='port (default: 5005)')
    args = parser.parse_args(commands.argv_of(argv))
    return serve(args.host, args.port)


def serve(host: str, port: int) -> int:
    """Run labml's app on `host:port`, in place of this process."""
    if importlib.util.find_spec('labml_app') is None:
        raise UserError('labml-app is not installed; pip install "gpt-experiment[dashboard]"')
    print(f'labml dashboard: http://{host}:{port}/', flush=True)
    print(f'runs point at it with labml_server={api_url(host, port)} '
          f'(or web_api: {api_url(host, port)}/track? in .labml.yaml)', flush=True)
    data = data_folder()
    data.mkdir(parents=True, exist_ok=True)
    print(f'dashboard data: {data}', flush=True)
    # What `labml app-server` runs (`labml_app.start_server`): gunicorn with one uvicorn worker,
    # here in place of this process, so that Ctrl-C and signals reach it directly.
    env = dict(os.environ, LABML_APP_SERVER_IP=host, LABML_APP_SERVER_PORT=str(port))
    # The app writes `labml_app.log` into its current directory: `--chdir` makes that its data folder.
    os.execve(sys.executable, [sys.executable, '-m', 'gunicorn', '--bind', f'{host}:{port}', '-w', '1',
                               '--chdir', str(data),
                               '-k', 'uvicorn.workers.UvicornWorker', 'labml_app.flask_app:app'], env)


if __name__ == '__main__':
    sys.exit(main())
