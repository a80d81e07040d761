"""
# The labml dashboard, locally, behind doors

```
python -m gpt_experiment.dashboard [--host 127.0.0.1] [--port 5005] [--token TOKEN]
```

starts labml's own web app ([labml-app](https://pypi.org/project/labml-app/) 0.0.102, the last
release that keeps its runs in local files) in the foreground, bound to loopback unless asked
otherwise. Runs show up there live when labml is told where it is, either in `.labml.yaml`

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

## The doors

labml-app 0.0.102 is frozen upstream, and as it is it has two open doors:

* **files**: its catch-all route (`/{file_path:path}`) joins the request's path to its static
  folder as a string, so `GET /../../../../etc/passwd`, or the same with `%2e%2e`, serves any
  file the process can read;
* **writes**: `POST /api/v1/track` creates and updates runs, and the page's API claims, renames,
  deletes and adds them, without asking who calls (the local app has no login): anyone who
  reaches the port can push fake runs or delete real ones. On a machine shared with others,
  loopback is reachable by every one of them, and any web page the user opens can send a
  "simple" POST to it.

So the app is never served as it is. It runs in this process under uvicorn (what `labml
app-server` runs under gunicorn, with one worker), wrapped in `Doors`, which sees every request
before the app does and answers these itself:

1. a path that could leave the app's folder, however many times it is percent-decoded: 404;
2. on loopback, a `Host` that is not a loopback name: 403 (a web page that re-points its own
   host name at 127.0.0.1, "DNS rebinding", would otherwise read the runs);
3. a token that is presented and is not the dashboard's: 403;
4. a write (any method but `GET` and `HEAD`, save the page's one "who am I" `POST`) without the
   token: 403.

**The token** is the dashboard's write key: 32 random bytes, created once in
`~/.labml/app/dashboard.token` (mode 0600, beside the app's data) and kept, so that a run
survives a restart of the dashboard; or the one given with `--token` or `GPT_DASHBOARD_TOKEN`,
which then replaces it there. A run presents it in the query, `labml_token=...`, where labml's
sender already puts the token of its own `labml_token` environment variable; `Doors` checks
it and takes it off before the app sees the request (the app would read it as a project of its
hosted service and refuse the run). Runs find it, in this order: in the URL they were given
(`labml_server` with `labml_token`, or `.labml.yaml`), in `GPT_DASHBOARD_TOKEN`, or in the token
file, for a dashboard on loopback only (the file's token is never sent to another machine).

**Reads stay open** to whoever can connect, which is loopback unless `--host` says otherwise.
The page in a browser is read-only: its Claim, rename, delete and chart-preference buttons are
refused (the run claims, names and charts itself: below).

**Beyond loopback.** `--host 0.0.0.0` (or any address that is not loopback) needs an explicit
token, `--token` or `GPT_DASHBOARD_TOKEN`, which the remote runs are given as `labml_token`;
without one it is refused, with the alternative: keep it on loopback and tunnel to it with
`ssh -L 5005:127.0.0.1:5005 user@host`.

**Starting** is checked before anything is printed: labml-app installed, a port in 1-65535
(not 0: runs are pointed at a fixed port), the token, and the port itself, bound here and handed
to uvicorn, so that a busy one is one line. Each failure is one `error:` line and exit 2. The
URL is printed once the server answers it.

## Training without the dashboard

The other half of this module keeps training independent of the dashboard. labml 0.4 sends to
the dashboard from a thread that retries forever and that the interpreter waits for, so with
no dashboard answering a finished run never exits. So we

* look for the dashboard before the run starts, and train without the `web_api` writer when
  nobody answers, or when it refuses the run's token;
* make labml's sender thread a daemon, and after training wait for it only while the dashboard
  answers (at most `FLUSH_SECONDS`), then say in one line that it was not reached.

## What a run shows there

The app shows what it was sent as it is; three things about a run are ours to set, with the
token, as its own buttons would (`present`):

* **claimed**, as the Claim button does, so that it is in the runs list while it trains;
* **its name in the runs list**: a list row shows a run's name, its comment and its start, and
  every run here is named after its experiment (`gpt`), so the dashboard's copy of the name gets
  the uuid's first 8 characters, `gpt · 147f2928`, what `gpt-train --resume` takes and what
  `logs/gpt/` lists, and at the run's end its last validation loss,
  `gpt · 147f2928 · valid 1.6347`. The comment is the user's (`--comment`), as labml sent it,
  never changed; the run's own files keep labml's name;
* **its first chart**: the app draws one chart per run, on one axis, and its metrics page plots
  every series (its card only those named `loss.*`, until told otherwise), so
  `tokens_per_second` (thousands) flattens the losses (a few units) to a line at zero. The
  app keeps, per run, which series its chart plots (the metrics preferences, the page's Save
  button): we keep them at the two losses, `loss.train` and `loss.valid`. The other series
  stay listed under the chart, each with its own small line and its last value, and on the
  metrics page one click on one plots it (the app has no second chart to give them).
"""

import hmac
import importlib.util
import ipaddress
import json
import os
import re
import secrets
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from labml import logger
from labml.logger import Text

from . import commands, files, labml_glue
from .errors import UserError

DEFAULT_HOST = '127.0.0.1'
DEFAULT_PORT = 5005
# How long we wait, after training, for a dashboard that answers to take the last updates;
# the app holds every update request for 3 seconds.
FLUSH_SECONDS = 30
# How long a dashboard has to answer a probe
PROBE_SECONDS = 2

# The query parameter that carries the token: the one labml's sender fills from `labml_token`.
TOKEN_PARAM = 'labml_token'
# The environment variable that gives the token to the launcher and to runs
TOKEN_ENV = 'GPT_DASHBOARD_TOKEN'
# What a token may be: it travels unescaped in labml's URLs, and a short one could be guessed.
TOKEN_PATTERN = re.compile(r'[A-Za-z0-9._~-]{16,256}')
# The header by which the dashboard tells a run, before it trains, that writes need the token
WRITES_HEADER = 'X-Dashboard-Writes'
_WRITES_HEADER = (WRITES_HEADER.lower().encode(), b'token')  # as ASGI sends it


def data_folder() -> Path:
    """Where the app keeps the runs it was sent: `~/.labml/app/data`."""
    return labml_glue.app_folder() / 'data'


def token_file() -> Path:
    """Where the dashboard keeps its token for the runs on this machine: `~/.labml/app/dashboard.token`."""
    return labml_glue.app_folder() / 'dashboard.token'


def app_url(url: str) -> str:
    """`http://host:port` of a `web_api` URL (without its query, so without its token)."""
    parts = urlsplit(url)
    return f'{parts.scheme}://{parts.netloc}'


def _bracketed(host: str) -> str:
    # an IPv6 address in a URL is in brackets
    return f'[{host}]' if ':' in host else host


def is_loopback(host: Optional[str]) -> bool:
    """Whether `host` is a loopback address or `localhost` (resolves nothing)."""
    if not host:
        return False
    if host.lower() == 'localhost':
        return True
    try:
        return ipaddress.ip_address(host.strip('[]')).is_loopback
    except ValueError:
        return False


# ## The runs' side: connect, finish, and what they show
#
# A run's `web_api` URL is labml's (`.../api/v1/track?`, or `...?labml_token=...&` from
# `labml_server` and `labml_token`); it gets the dashboard's token in its query, and everything
# the run sends to the dashboard afterwards goes through it.

def token_of(url: str) -> Optional[str]:
    """The token a `web_api` URL carries, or `None`."""
    return dict(parse_qsl(urlsplit(url).query)).get(TOKEN_PARAM) or None


def with_token(url: str, token: str) -> str:
    """`url` with the token added to its query, as labml writes it (`...?labml_token=T&`)."""
    sep = '' if url.endswith(('?', '&')) else ('&' if '?' in url else '?')
    return f'{url}{sep}{TOKEN_PARAM}={quote(token, safe="")}&'


def token_for(url: str) -> Optional[str]:
    """The token a run sends to the dashboard at `url`: the URL's own, `GPT_DASHBOARD_TOKEN`'s, or the file's."""
    token = token_of(url) or os.environ.get(TOKEN_ENV)
    if token:
        return token
    # The file holds the token of the dashboard on this machine: never sent to another one.
    if not is_loopback(urlsplit(url).hostname):
        return None
    try:
        return files.read_text(token_file(), max_bytes=4096).strip() or None
    except UserError:
        return None  # no dashboard started here yet, or an unreadable file: the dashboard says so


def knock(url: str, timeout: float = PROBE_SECONDS) -> Optional[Tuple[int, dict, bytes]]:
    """
    The dashboard's answer to `GET /` with the URL's token (status, headers, body), whatever the
    status; `None` when nothing answers.
    """
    token = token_of(url)
    target = app_url(url) + '/' + (f'?{TOKEN_PARAM}={quote(token, safe="")}' if token else '')
    try:
        with urllib.request.urlopen(target, timeout=timeout) as response:
            return response.status, dict(response.headers), b''
    except urllib.error.HTTPError as e:
        try:
            return e.code, dict(e.headers), e.read(4096)
        finally:
            e.close()
    except (OSError, ValueError):
        return None


def reachable(url: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether anything answers HTTP at the dashboard's address (any status counts)."""
    return knock(url, timeout) is not None


def _refusal(body: bytes) -> str:
    # the one line `Doors` gives with a refusal
    try:
        return str(json.loads(body.decode('utf-8'))['error'])
    except (ValueError, KeyError, TypeError):
        return 'refused'


def connect(writers: Set[str]) -> Optional[str]:
    """
    After `experiment.create` and before `experiment.start`: keep the `web_api` writer only
    when a dashboard is configured, answers, and takes this run's writes. Returns its URL, with
    the token, or `None`.
    """
    if 'web_api' not in writers:
        return None
    url = labml_glue.configured_dashboard_url()
    if url is not None:
        token = token_for(url)
        if token and not token_of(url):
            url = with_token(url, token)
            labml_glue.set_dashboard_url(url)
        answer = knock(url)
        if answer is None:
            logger.log(f'Dashboard not reached at {app_url(url)}; training without it.', Text.warning)
            url = None
        elif answer[0] == 403:
            logger.log(f'Dashboard at {app_url(url)} refused this run ({_refusal(answer[2])}); '
                       f'training without it.', Text.warning)
            url = None
        elif token is None and {k.lower(): v for k, v in answer[1].items()}.get(WRITES_HEADER.lower()) == 'token':
            logger.log(f'Dashboard at {app_url(url)} takes runs only with its token ({TOKEN_ENV}, or '
                       f'labml_token with labml_server); training without it.', Text.warning)
            url = None
    if url is None:
        labml_glue.drop_writer('web_api')
        return None
    # The run starts with labml's sender thread a daemon (`labml_glue.start`): with the
    # dashboard gone, the interpreter would wait for its retries forever. `finish` waits for
    # it instead, for a bounded time.
    return url


def finish(url: Optional[str], run_uuid: str, valid: Optional[float] = None) -> Optional[str]:
    """
    After training: let labml's sender deliver the last updates while the dashboard answers,
    then present the run once more (claimed, named with its last validation loss `valid`, its
    first chart: the watch of `claim_soon` may have missed the last series). Returns the run's
    page, or `None` (with one line) when not reached.
    """
    if url is None:
        return None
    # the watch is over: what it would do, `present` does now, with every series there
    _stop_watching(run_uuid)
    thread = labml_glue.dashboard_sender_thread()
    if thread is not None and reachable(url):
        thread.join(FLUSH_SECONDS)
    if thread is None or thread.is_alive() or thread.errored or not reachable(url):
        logger.log(f'Dashboard not reached at {app_url(url)}; the run is in logs/ only.', Text.warning)
        return None
    present(url, run_uuid, valid)
    return f'{app_url(url)}/run/{run_uuid}'


# ## What a run shows on the dashboard
#
# Each of these is one request to the app's own API, as its page's buttons make it, with the
# token (`api`), and each can be repeated: the run is the same after two as after one.

# The series the run page's chart plots, by name: the losses, on an axis of their own.
FIRST_CHART = ('loss.train', 'loss.valid')
# How often, while a run trains, we look whether its series changed (a GET of a few kB)
WATCH_SECONDS = 5
# How long a request to the app may take (it answers at once; a busy app, a few seconds)
REQUEST_SECONDS = PROBE_SECONDS * 5
# What separates the experiment's name from the uuid's first characters in the runs list
NAME_SEPARATOR = ' · '


def api(url: str, method: str, path: str, body: Any = None) -> Optional[Any]:
    """
    The app's JSON answer to `method /api/v1/<path>` (with `body` as JSON) at the dashboard of
    `url`, with its token; `None` when it does not answer, or not with 200 and JSON.
    """
    target = f'{app_url(url)}/api/v1/{path}'
    token = token_of(url)
    if token:
        target += f'?{TOKEN_PARAM}={quote(token, safe="")}'
    data = None if body is None else json.dumps(body).encode('utf-8')
    req = urllib.request.Request(target, data=data, method=method, headers={'Content-Type': 'application/json'})
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_SECONDS) as response:
            return json.loads(response.read().decode('utf-8'))
    except (OSError, ValueError):
        return None  # not reached, refused (403, 404: an HTTPError is an OSError), or not JSON


def claim(url: str, run_uuid: str) -> bool:
    """Claim a run, as the run page's Claim button does, so that no clean-up deletes it (`False`: not known yet)."""
    answer = api(url, 'PUT', f'run/{run_uuid}/claim', {})
    return isinstance(answer, dict) and bool(answer.get('is_successful'))


def listed_name(name: str, run_uuid: str, valid: Optional[float] = None) -> str:
    """
    What the runs list shows as a run's name: labml's (the experiment's), then the uuid's first
    8 characters, and once the run has ended, its last validation loss: `gpt · 147f2928 · valid 1.6347`.
    """
    short = run_uuid[:8]
    # labml's name, without what an earlier call added
    base = '' if name == short or name.startswith(short + NAME_SEPARATOR) else \
        name.split(NAME_SEPARATOR + short)[0]
    parts = [base, short] + ([f'valid {valid:.4f}'] if valid is not None else [])
    return NAME_SEPARATOR.join(p for p in parts if p)


def name_run(url: str, run_uuid: str, valid: Optional[float] = None) -> bool:
    """Give the dashboard's copy of the run its listed name (the run's page's rename, with the token)."""
    run = api(url, 'GET', f'run/{run_uuid}')
    if not isinstance(run, dict) or 'name' not in run:
        return False  # not known yet
    name = listed_name(str(run['name'] or ''), run_uuid, valid)
    if name == run['name']:
        return True
    # only the name: the comment is the user's, as labml sent it
    answer = api(url, 'POST', f'run/{run_uuid}', {'name': name})
    return isinstance(answer, dict) and not answer.get('errors')


def series_names(url: str, run_uuid: str) -> Optional[List[str]]:
    """The names of a run's series, in the order the app lists them (by name), or `None`."""
    answer = api(url, 'GET', f'metrics/{run_uuid}')
    if not isinstance(answer, dict) or not isinstance(answer.get('series'), list):
        return None
    return [str(s.get('name')) for s in answer['series'] if isinstance(s, dict)]


def first_chart(names: List[str]) -> List[int]:
    """
    The metrics preferences' `series_preferences` for series `names`, in the app's order: one
    number per series, its place on the chart (0, 1, ...) for the losses, -1 (not plotted) for
    every other. The page reads it by position, so it is right only for exactly these names.
    """
    places = iter(range(len(names)))
    return [next(places) if name in FIRST_CHART else -1 for name in names]


def show_losses(url: str, run_uuid: str, names: List[str]) -> bool:
    """Have the run's chart plot its losses only, for the series `names` the app has now."""
    answer = api(url, 'POST', f'metrics/preferences/{run_uuid}',
                 {'series_preferences': first_chart(names), 'chart_type': 0})  # 0: a linear axis
    # (`{}` when the app has no preferences for the run yet: not known yet)
    return isinstance(answer, dict) and answer.get('errors') == []


def present(url: str, run_uuid: str, valid: Optional[float] = None) -> bool:
    """
    Claim the run, name it (with its last validation loss `valid`, at the end), and have its
    chart plot its losses, for the series the app has now (at the end, when they are all
    there); `False` while the app does not know the run yet.
    """
    if not claim(url, run_uuid):
        return False
    name_run(url, run_uuid, valid)
    names = series_names(url, run_uuid)
    if names and set(names) & set(FIRST_CHART):
        show_losses(url, run_uuid, names)
    return True


# ### While the run trains
#
# The app knows a run from labml's first update (sent from labml's own thread), and its series
# as they come: `loss.train` with the first report, `loss.valid` with the first validation, so
# the chart's preferences, read by position, must follow the list. A daemon thread does it, so
# that training never waits for the dashboard.

# The watch of each run of this process that trains: its uuid -> (its thread, what stops it)
_watches: Dict[str, Tuple[threading.Thread, threading.Event]] = {}


def claim_soon(url: Optional[str], run_uuid: str):
    """
    At the start of training: present the run as soon as the dashboard knows it (claimed and
    named, retrying for `FLUSH_SECONDS`), then, until `finish`, keep its chart on its losses
    as its series come: set once both losses are there, and again whenever the list changes.
    """
    if url is None:
        return
    stop = threading.Event()

    def watch():
        deadline = time.time() + FLUSH_SECONDS
        while not claim(url, run_uuid):
            if time.time() >= deadline or stop.wait(0.5):
                return  # never known: `finish` tries once more
        name_run(url, run_uuid)
        shown = None
        while not stop.is_set():
            names = series_names(url, run_uuid)
            # Both losses, or nothing: set with `loss.train` alone, the preferences would be
            # a place short once the first validation brings `accuracy.valid` (listed before
            # it), and the chart would plot `grad_norm` until we saw the new list.
            if names and names != shown and set(FIRST_CHART) <= set(names) and not stop.is_set() \
                    and show_losses(url, run_uuid, names):
                shown = names
            stop.wait(WATCH_SECONDS)

    thread = threading.Thread(target=watch, name='dashboard run', daemon=True)
    _watches[run_uuid] = (thread, stop)
    thread.start()


def _stop_watching(run_uuid: str):
    """End the watch of `claim_soon`, letting a request it is making finish (so that it does not undo `present`'s)."""
    thread, stop = _watches.pop(run_uuid, (None, None))
    if thread is not None:
        stop.set()
        thread.join(REQUEST_SECONDS + 1)


# ## The doors
#
# An ASGI middleware: it gets each request's `scope` (method, path as uvicorn decoded it once,
# the raw path, the query, the headers) before the app, and either answers it or passes it on.

# Reads. Everything else writes, save the one `POST` the page makes on every load to ask who
# its user is (`labml_app.handlers.get_user`, which on the local app is always "local").
READS = {'GET', 'HEAD'}
PAGE_POSTS = {'/api/v1/auth/user'}
# How many times a path is decoded before it is taken for what it is: past that, nobody's path.
DECODINGS = 4


def leaves_folder(path: str) -> bool:
    """
    Whether a request's path, decoded once (as uvicorn gives it to the app) or any number of
    times more (as a proxy, a framework or a file API might), could name a file outside the
    folder it is joined to, or anything but a plain path.
    """
    for _ in range(DECODINGS):
        if not path.startswith('/'):
            return True  # `*`, `http://host/...`: not a path in the app's folder
        if '\\' in path or not path.isprintable():
            return True  # a backslash is a separator somewhere; a NUL or a newline is nobody's name
        if {'.', '..'} & set(path.split('/')):
            return True  # `..` climbs out; `.` is only ever there to hide a `..` from a naive check
        decoded = unquote(path)
        if decoded == path:
            return False
        path = decoded  # `%2e%2e`, `%2f`, `%252e`...: look again at what it decodes to
    return True


class Doors:
    """labml-app's ASGI application, wrapped: every request is checked (the module's list) first."""

    def __init__(self, app, *, token: str, static: Path, host: str, loopback: bool):
        self.app = app
        self.token = token.encode('utf-8')
        self.static = static.resolve()
        self.host = host.lower()
        # the Host check is for loopback; bound to a wider address, the user chose who reaches it
        self.loopback_only = loopback

    async def __call__(self, scope, receive, send):
        if scope['type'] == 'lifespan':
            return await self.app(scope, receive, send)
        if scope['type'] != 'http':
            # labml-app has no websockets: nothing else gets through
            return await send({'type': 'websocket.close', 'code': 1008})
        refusal = self.check(scope)
        if refusal is not None:
            status, reason = refusal
            # one line for the owner, with the path escaped (it is whatever the caller sent)
            print(f'refused {scope["method"]} {ascii(scope["path"])[1:-1][:200]}: {reason}',
                  file=sys.stderr, flush=True)
            return await self.answer(send, status, reason)
        # The token goes no further: the app would read it as a project token, and log it.
        query = [(k, v) for k, v in parse_qsl(scope['query_string'].decode('latin-1'), keep_blank_values=True)
                 if k != TOKEN_PARAM]
        scope = dict(scope, query_string=urlencode(query).encode('latin-1'))
        await self.app(scope, receive, self.announcing(send))

    def check(self, scope) -> Optional[Tuple[int, str]]:
        """`(status, reason)` for a request that stops here, or `None` for one that goes to the app."""
        path = scope['path']
        # (the path as the client sent it, where the server gives it: ASGI makes it optional)
        raw = scope.get('raw_path')
        # 1. Files: stops `..`, plain, percent-encoded once or more, with `/` or `\\`, from
        # leaving the static folder through the app's catch-all route.
        if (raw and leaves_folder(raw.decode('latin-1'))) or leaves_folder(path):
            return 404, 'not found'
        # ... and a link inside the static folder that points out of it
        if not (self.static / path.lstrip('/')).resolve().is_relative_to(self.static):
            return 404, 'not found'
        headers = dict(scope['headers'])
        # 2. Host: stops a web page whose own name was re-pointed at 127.0.0.1 from reading runs.
        if self.loopback_only and not self.loopback_name(headers.get(b'host')):
            return 403, 'this dashboard answers to loopback names only'
        # 3. A presented token must be ours: stops guessing, and tells a run with a stale token before it trains.
        presented = [v for k, v in parse_qsl(scope['query_string'].decode('latin-1'), keep_blank_values=True)
                     if k == TOKEN_PARAM and v]
        if any(not hmac.compare_digest(v.encode('utf-8'), self.token) for v in presented):
            return 403, 'wrong dashboard token'
        # 4. Writes need it: stops fake runs, and renaming, deleting or claiming runs by anyone else.
        write = scope['method'] not in READS and not (scope['method'] == 'POST' and path in PAGE_POSTS)
        if write and not presented:
            return 403, f'writes need the dashboard token ({TOKEN_PARAM}=..., see {TOKEN_ENV})'
        return None

    def loopback_name(self, host: Optional[bytes]) -> bool:
        """Whether a `Host` header names this machine's loopback (or the `--host` it was given)."""
        if host is None:
            return True  # HTTP/1.0 without one: not a browser, so not a rebound web page
        try:
            name = urlsplit('//' + host.decode('latin-1')).hostname
        except ValueError:
            return False
        return name is not None and (is_loopback(name) or name == self.host)

    @staticmethod
    async def answer(send, status: int, reason: str):
        """A refusal: `{"error": reason}`."""
        body = json.dumps({'error': reason}).encode('utf-8')
        await send({'type': 'http.response.start', 'status': status,
                    'headers': [(b'content-type', b'application/json'),
                                (b'content-length', str(len(body)).encode()), _WRITES_HEADER]})
        await send({'type': 'http.response.body', 'body': body})

    @staticmethod
    def announcing(send):
        """`send`, adding to every answer that writes need the token (for `connect`, before a run trains)."""
        async def wrapped(message):
            if message['type'] == 'http.response.start':
                message = dict(message, headers=[*message.get('headers', []), _WRITES_HEADER])
            await send(message)
        return wrapped


# ## The launcher

def port_number(text: str) -> int:
    """`--port`: a port runs can be pointed at."""
    try:
        port = int(text)
    except ValueError:
        raise UserError(f'--port {text}: not a number') from None
    if port == 0:
        # (the system would pick one, that no run is pointed at)
        raise UserError('--port 0: give the port the dashboard listens on, 1-65535 (5005 by default)')
    if not 1 <= port <= 65535:
        raise UserError(f'--port {port}: out of range, 1-65535')
    return port


@commands.command
def main(argv=None) -> int:
    """`gpt-dashboard` and `python -m gpt_experiment.dashboard`: the app in the foreground."""
    parser = commands.Parser(prog='gpt-dashboard', description="Start labml's dashboard (labml-app) in the foreground.")
    parser.add_argument('--host', default=DEFAULT_HOST, help='address to bind (default: loopback only)')
    parser.add_argument('--port', type=port_number, default=DEFAULT_PORT, help='port (default: 5005)')
    parser.add_argument('--token', default=None,
                        help=f'the token runs must present to write (default: ${TOKEN_ENV}, else the one in '
                             f'~/.labml/app/dashboard.token); needed for a --host beyond loopback. '
                             f'${TOKEN_ENV} keeps it out of the process list.')
    args = parser.parse_args(commands.argv_of(argv))
    return serve(args.host, args.port, args.token or os.environ.get(TOKEN_ENV) or None)


def serve(host: str, port: int, token: Optional[str] = None) -> int:
    """Run labml's app behind `Doors` on `host:port` until Ctrl-C or SIGTERM."""
    if importlib.util.find_spec('labml_app') is None:
        raise UserError('labml-app is not installed; pip install "gpt-experiment[dashboard]"')
    if token is not None and not TOKEN_PATTERN.fullmatch(token):
        raise UserError('--token: 16 to 256 of A-Z a-z 0-9 . _ ~ - (it travels in a URL)')
    infos = addresses(host, port)
    loopback = all(is_loopback(info[4][0]) for info in infos)
    if token is None and not loopback:
        raise UserError(f'--host {host} lets the network write to the dashboard: give it a token (--token or '
                        f'{TOKEN_ENV}) for the runs, or keep it on loopback and tunnel to it: '
                        f'ssh -L {port}:127.0.0.1:{port} user@host')
    sock = listen(infos[0], host, port)
    token = keep_token(token)
    data = data_folder()
    data.mkdir(parents=True, exist_ok=True)
    # The app writes `labml_app.log` into its current directory: its data folder.
    os.chdir(data)
    app, static = labml_glue.dashboard_app(host, port)

    import uvicorn
    doors = Doors(app, token=token, static=static, host=host, loopback=loopback)
    # uvicorn quiet (the app logs each request itself), and not waiting more than 5 s at exit for
    # the app's long polls
    server = uvicorn.Server(uvicorn.Config(doors, log_level='warning', access_log=False, timeout_graceful_shutdown=5))
    base = f'http://{_bracketed(host)}:{port}'
    threading.Thread(target=announce, args=(server, probe_url(sock), base, data, loopback), name='announce',
                     daemon=True).start()
    try:
        server.run(sockets=[sock])
    except SystemExit:
        raise UserError('labml-app did not start (see its messages above)') from None
    finally:
        sock.close()
    return 0


def addresses(host: str, port: int) -> list:
    """What `--host` names, as `getaddrinfo` gives them (`(family, type, proto, name, address)`): the first is bound."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UserError(f'--host {host}: {e.strerror}') from None


def listen(info, host: str, port: int) -> socket.socket:
    """
    A socket listening on the address, handed to uvicorn: bound here, a busy port is one line
    (uvicorn's own binding logs it, and gunicorn's retried and printed its own errors).
    """
    family, kind, proto, _, address = info
    sock = socket.socket(family, kind, proto)
    try:
        # as uvicorn does: a restarted dashboard may take its port back at once
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise UserError(f'cannot listen on {_bracketed(host)}:{port}: {e.strerror or e}') from None
    return sock


def keep_token(token: Optional[str]) -> str:
    """
    The dashboard's token: the one given, written to the token file for the runs on this
    machine; else the file's; else a new one, written there. The file is 0600 from its first byte.
    """
    path = token_file()
    try:
        kept = files.read_text(path, max_bytes=4096).strip()
    except UserError:
        kept = ''  # none yet, or not a file we can read: written anew
    token = token or (kept if TOKEN_PATTERN.fullmatch(kept) else secrets.token_urlsafe(32))
    if token == kept:
        os.chmod(path, 0o600)  # put back, should someone have opened it up
        return token
    tmp = files.temporary(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, 'w') as f:
            f.write(token + '\n')
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise files.cannot_write(path, e) from None
    return token


def probe_url(sock: socket.socket) -> str:
    """Where this process itself asks whether the server answers: the bound address, or loopback for a wildcard."""
    host, port = sock.getsockname()[:2]
    if ipaddress.ip_address(host).is_unspecified:
        host = '::1' if sock.family == socket.AF_INET6 else '127.0.0.1'
    return f'http://{_bracketed(host)}:{port}'


def announce(server, probe: str, base: str, data: Path, loopback: bool):
    """Print where the dashboard is, once it answers there (from a thread, while uvicorn serves)."""
    while not server.should_exit:
        if reachable(probe, timeout=1):
            print(f'labml dashboard: {base}/', flush=True)
            print(f'runs point at it with labml_server={base}/api/v1 (or web_api: {base}/api/v1/track? in .labml.yaml)',
                  flush=True)
            if loopback:
                print(f'runs on this machine find its write token in {token_file()}', flush=True)
            else:
                print(f'runs elsewhere write to it with labml_token=<its token> (or {TOKEN_ENV}); '
                      f'on this machine they find it in {token_file()}', flush=True)
            print(f'dashboard data: {data}', flush=True)
            return
        time.sleep(0.2)


if __name__ == '__main__':
    sys.exit(main())
