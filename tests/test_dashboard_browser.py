"""
The dashboard, proven in a real browser: a tiny run sent to labml's dashboard shows its loss
curves and the overrides it was given, in headless Chromium (Debian's `chromium`) driven by
Playwright for Python. Its chart, on the run's page and on its metrics page, plots the two
losses and not the rates, which stay listed beside it; the runs list shows the run's uuid and
its comment. Screenshots of the three pages go to `tests/screenshots/`.

The dashboard's page loads d3, Bootstrap, the Sentry tracing bundle and Font Awesome from
public CDNs; offline, we route those URLs to the same files installed from the npm registry
(`tests/web/package.json`, installed by `.ci/run`; or a `node_modules` folder named by
`DASHBOARD_NODE_MODULES`). Everything else outside the dashboard is refused.
"""

import os
import re
import shutil
from pathlib import Path

import pytest

from conftest import REPO_ROOT, TINY, run_cli, write_project
from dashboard_helpers import dashboard_token, running_dashboard

# The dashboard and a browser.
pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get('CHROMIUM', '/usr/bin/chromium')
NODE_MODULES = Path(os.environ.get('DASHBOARD_NODE_MODULES', REPO_ROOT / 'tests' / 'web' / 'node_modules'))
# Where the page's CDN files come from, offline: URL prefix -> installed file or folder.
CDN = {
    'https://cdn.jsdelivr.net/npm/bootstrap@5.0.0-beta2/': NODE_MODULES / 'bootstrap',
    'https://d3js.org/d3.v6.min.js': NODE_MODULES / 'd3' / 'dist' / 'd3.min.js',
    'https://browser.sentry-cdn.com/6.2.3/': NODE_MODULES / '@sentry' / 'tracing' / 'build',
    'https://cdnjs.cloudflare.com/ajax/libs/font-awesome/5.9.0/': NODE_MODULES / '@fortawesome' / 'fontawesome-free',
}
CHROMIUM_ARGS = ['--no-sandbox', '--headless', '--disable-gpu', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--no-first-run']
SCREENSHOTS = Path(os.environ.get('SCREENSHOT_DIR', REPO_ROOT / 'tests' / 'screenshots'))

# The overrides of the run, as the configs card must show them
OVERRIDES = {**TINY, 'epochs': 2, 'inner_iterations': 1, 'sample_tokens': 5}
COMMENT = 'browser test'
# What the trainer tracks: the losses go on the chart, the rest are listed beside it
LOSSES = ['loss.train', 'loss.valid']
LISTED = ['accuracy.train', 'accuracy.valid', 'grad_norm', 'loss.train', 'loss.valid', 'lr', 'tokens_per_second']

# The series a metrics chart plots, read from the page: the chart draws one line per plotted
# series (`path.smoothed-line`) in the series' colour, and the list below it writes each
# series' name in its colour when plotted, in a neutral one when not.
PLOTTED = """
card => {
    const lines = [...card.querySelectorAll('svg#chart path.smoothed-line')];
    const colours = new Set(lines.map(l => getComputedStyle(l).stroke));
    const titles = [...card.querySelectorAll('.sparkline-list-item .title')];
    return {lines: lines.length,
            listed: titles.map(t => t.textContent),
            plotted: titles.filter(t => colours.has(getComputedStyle(t).color)).map(t => t.textContent)};
}
"""


def _browser_missing() -> str:
    """Why the browser test cannot run here, or ''."""
    if not (shutil.which(CHROMIUM) or Path(CHROMIUM).is_file()):
        return f'Chromium not found at {CHROMIUM} (apt-get install chromium)'
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return 'Playwright for Python is not installed (pip install playwright)'
    missing = [str(p) for p in CDN.values() if not p.exists()]
    if missing:
        return f'the dashboard page\'s CDN files are not installed (npm install --prefix tests/web): {missing[0]}'
    return ''


def _route(base: str):
    def handle(route):
        url = route.request.url
        if url.startswith(base):
            return route.continue_()
        for prefix, path in CDN.items():
            if url.startswith(prefix):
                rest = url[len(prefix):].split('?')[0].split('#')[0]
                return route.fulfill(path=str(path / rest if rest else path))
        return route.abort()
    return handle


def test_a_run_shows_its_metrics_and_configs_on_the_dashboard(tmp_path, monkeypatch):
    reason = _browser_missing()
    if reason and os.environ.get('GPT_EXPERIMENT_REQUIRE_BROWSER') == '1':
        pytest.fail(reason)  # CI installs all of it: a skip there would hide a broken install
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import expect, sync_playwright

    with running_dashboard(tmp_path / 'home', tmp_path / 'dashboard.log') as base:
        assert f'labml dashboard: {base}/' in (tmp_path / 'dashboard.log').read_text()
        # The project points labml at the dashboard through `.labml.yaml`; the run's writes carry
        # the dashboard's token, given here as it is to a run on another machine.
        project = write_project(tmp_path / 'project')
        with open(project / '.labml.yaml', 'a') as f:
            f.write(f'web_api: {base}/api/v1/track?\nweb_api_open_browser: false\n')
        monkeypatch.setenv('GPT_DASHBOARD_TOKEN', dashboard_token(tmp_path / 'home'))
        result = run_cli(['text=corpus.txt', *(f'{k}={v}' for k, v in OVERRIDES.items()), '--comment', COMMENT],
                         cwd=project)
        assert result.returncode == 0, result.stderr[-3000:]
        assert 'not reached' not in result.stdout
        page_url = re.search(rf'dashboard:\s+({re.escape(base)}/run/\w+)', result.stdout)
        assert page_url, result.stdout[-2000:]

        run_uuid = page_url.group(1).rsplit('/', 1)[1]

        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shots = {name: SCREENSHOTS / f'dashboard_{name}.png' for name in ('run', 'metrics', 'runs')}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={'width': 1200, 'height': 1600})
                page.route('**/*', _route(base))

                # The run's page: its first chart plots the losses, and lists the rest.
                page.goto(page_url.group(1))
                metrics = page.locator('.labml-card', has=page.locator('h3.header', has_text='Metrics'))
                configs = page.locator('.labml-card', has=page.locator('h3.header', has_text='Configurations'))
                expect(metrics).to_contain_text('loss.train', timeout=30_000)
                expect(metrics).to_contain_text('loss.valid')
                # the chart itself is drawn
                expect(metrics.locator('svg path').first).to_be_visible()
                chart = metrics.evaluate(PLOTTED)
                assert chart == {'lines': 2, 'listed': LISTED, 'plotted': LOSSES}, chart
                expect(configs).to_contain_text('text_file', timeout=30_000)
                text = configs.inner_text()
                for key, value in OVERRIDES.items():
                    shown = f'{value:g}' if isinstance(value, float) else str(value)  # the card shows 0.0 as 0
                    assert re.search(rf'^{re.escape(key)}\s*:?\s*{re.escape(shown)}$', text, re.M), (key, text)
                assert 'text_file' in text  # its value is shortened to fit
                # The run was claimed at the end of training: no "will be deleted" banner.
                body = page.inner_text('body')
                assert 'will be deleted' not in body
                # its header: the name with the uuid, and the comment
                assert f'gpt · {run_uuid[:8]}' in body and COMMENT in body
                page.screenshot(path=str(shots['run']), full_page=True)

                # Its metrics page (a click on the card), where the app plots every series unless
                # told otherwise: the losses, and the rates each a click away, listed.
                metrics.click()
                page.wait_for_url(f'**/run/{run_uuid}/metrics')
                view = page.locator('.detail-card')
                expect(view.locator('.sparkline-list-item')).to_have_count(len(LISTED), timeout=30_000)
                expect(view.locator('svg#chart path.smoothed-line')).to_have_count(2)
                chart = view.evaluate(PLOTTED)
                assert chart == {'lines': 2, 'listed': LISTED, 'plotted': LOSSES}, chart
                # (the list marks the plotted ones, which a click toggles)
                assert view.locator('.sparkline-list-item.selected .title').all_inner_texts() == LOSSES
                page.screenshot(path=str(shots['metrics']), full_page=True)

                # The runs list: the run by its name with its uuid, and its comment.
                page.goto(f'{base}/runs')
                item = page.locator('a.list-item', has_text=run_uuid[:8])
                expect(item).to_have_count(1, timeout=30_000)
                # (and, the run over, its last validation loss)
                expect(item.locator('h5')).to_have_text(re.compile(rf'^gpt · {run_uuid[:8]} · valid \d+\.\d{{4}}$'))
                expect(item.locator('h6')).to_have_text(COMMENT)
                page.screenshot(path=str(shots['runs']), full_page=True)
            finally:
                browser.close()
        print(f'\nscreenshots: {", ".join(str(s) for s in shots.values())}')
