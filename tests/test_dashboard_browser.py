"""
The dashboard, proven in a real browser: a tiny run sent to labml's dashboard shows its loss
curves and the overrides it was given, in headless Chromium (Debian's `chromium`) driven by
Playwright for Python.

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
        result = run_cli(['text=corpus.txt', *(f'{k}={v}' for k, v in OVERRIDES.items())], cwd=project)
        assert result.returncode == 0, result.stderr[-3000:]
        assert 'not reached' not in result.stdout
        page_url = re.search(rf'dashboard:\s+({re.escape(base)}/run/\w+)', result.stdout)
        assert page_url, result.stdout[-2000:]

        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        screenshot = SCREENSHOTS / 'dashboard_run.png'
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={'width': 1200, 'height': 1600})
                page.route('**/*', _route(base))
                page.goto(page_url.group(1))
                metrics = page.locator('.labml-card', has=page.locator('h3.header', has_text='Metrics'))
                configs = page.locator('.labml-card', has=page.locator('h3.header', has_text='Configurations'))
                expect(metrics).to_contain_text('loss.train', timeout=30_000)
                expect(metrics).to_contain_text('loss.valid')
                # the chart itself is drawn
                expect(metrics.locator('svg path').first).to_be_visible()
                expect(configs).to_contain_text('text_file', timeout=30_000)
                text = configs.inner_text()
                for key, value in OVERRIDES.items():
                    shown = f'{value:g}' if isinstance(value, float) else str(value)  # the card shows 0.0 as 0
                    assert re.search(rf'^{re.escape(key)}\s*:?\s*{re.escape(shown)}$', text, re.M), (key, text)
                assert 'text_file' in text  # its value is shortened to fit
                # The run was claimed at the end of training: no "will be deleted" banner.
                assert 'will be deleted' not in page.inner_text('body')
                page.screenshot(path=str(screenshot), full_page=True)
            finally:
                browser.close()
        print(f'\nscreenshot: {screenshot}')
