"""
# labml's private parts (written against labml 0.4.168 and labml-helpers 0.4.89)

**Private.** labml's public API (`experiment`, `tracker`, `monit`, `@option`) covers almost
everything this project does. The few things it does not are here, and only here, so that a new
labml release breaks one module: each function says what it reaches into and why. Nothing
outside this module imports `labml.internal` or reads a name-mangled field.
"""

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from labml import experiment
from labml.configs import BaseConfigs
# labml's checkpoint writer and the interface of what it saves, which `checkpoints` subclasses
from labml.internal.experiment import CheckpointSaver, ModelSaver  # noqa: F401 (re-exported)

# The versions this module was written and tested against.
LABML_VERSION = '0.4.168'
LABML_HELPERS_VERSION = '0.4.89'


def _experiment():
    # The experiment that `experiment.create` made: labml keeps it in a module-level singleton.
    from labml.internal.experiment import experiment_singleton
    return experiment_singleton()


def run_path() -> Path:
    """The current run's folder, `logs/<name>/<uuid>`."""
    return Path(_experiment().run.run_path)


def run_uuid() -> str:
    """The current run's uuid."""
    return _experiment().run.uuid


def checkpoint_path() -> Path:
    """The current run's `checkpoints/` folder."""
    return Path(_experiment().run.checkpoint_path)


def set_checkpoint_saver(saver: CheckpointSaver):
    """Replace the current experiment's checkpoint writer (labml has no setter for it)."""
    _experiment().checkpoint_saver = saver


def drop_writer(name: str):
    """Stop sending tracked values to writer `name` (before `experiment.start`)."""
    _experiment().writers.discard(name)


def dashboard_sender_thread():
    """The thread that sends to the dashboard (labml's `ApiCaller`'s), or `None`."""
    web_api = _experiment().web_api
    return web_api.api_caller.thread if web_api is not None else None


def start(*, parent: Optional[str] = None, step: int = 0, daemon_sender: bool = False):
    """
    `experiment.start()`, for a run that continues run `parent` from global step `step`.

    * labml would find the parent's checkpoint itself (`experiment.load`), through a lookup
      that comes back empty without an error for some folder names, and load it through its
      savers. The run store has found and loaded it already, so labml's private
      `__start_from_checkpoint` is replaced, for this experiment only, by one that records the
      parent (`load_run` in `run.yaml`) and gives the step, which labml then starts from.
    * With `daemon_sender`, the dashboard sender that labml creates in it is a daemon thread:
      labml's retries forever, and the interpreter would wait for it at exit with the
      dashboard gone. labml passes no such argument, so its keyword default is changed for the
      duration of this call only, and restored.
    """
    from labml.internal.api import ApiCaller
    exp = _experiment()

    def from_checkpoint(run_uuid, checkpoint):
        exp.run.load_run = run_uuid
        return step

    exp._Experiment__start_from_checkpoint = from_checkpoint
    # (and `experiment.load` of an earlier run in this process is forgotten)
    experiment.load(None, None)
    defaults = ApiCaller.__init__.__kwdefaults__
    before = defaults['daemon']
    defaults['daemon'] = daemon_sender or before
    try:
        return exp.start(run_uuid=parent, checkpoint=step if parent else None)
    finally:
        defaults['daemon'] = before


def configured_dashboard_url() -> Optional[str]:
    """The `web_api` URL labml will send to (`.labml.yaml` or `labml_server`), if any."""
    from labml.internal.lab import lab_singleton
    web_api = lab_singleton().web_api
    return web_api.url if web_api is not None else None


def set_dashboard_url(url: str):
    """
    Send to the dashboard at `url` instead (after `experiment.create`, before
    `experiment.start`, which builds labml's sender from it): labml keeps the `web_api` URL it
    read from `.labml.yaml` or `labml_server` in its lab singleton, and has no setter for it.
    """
    from labml.internal.lab import lab_singleton
    lab_singleton().web_api.url = url


def app_folder() -> Path:
    """labml's configuration folder, `~/.labml/app`."""
    from labml.internal.computer.configs import computer_singleton
    return Path(computer_singleton().app_folder)


def dashboard_app(host: str, port: int) -> Tuple[Any, Path]:
    """
    labml-app's ASGI application (`labml_app.flask_app:app`, what `labml app-server` hands to
    gunicorn) and the folder its catch-all route serves files from (`STATIC_PATH`, a module
    constant of the same module). Importing it starts the app: it reads the address it is
    served at from two environment variables (`labml_app.settings`, for the run pages' URLs it
    gives back to runs and for its CORS origins), opens its database under `~/.labml/app/data`
    and its log, `labml_app.log`, in the current directory.
    """
    import os
    os.environ['LABML_APP_SERVER_IP'] = host
    os.environ['LABML_APP_SERVER_PORT'] = str(port)
    from labml_app import flask_app
    return flask_app.app, Path(flask_app.STATIC_PATH)


def configs_registry(configs: BaseConfigs) -> Tuple[Dict[str, Any], Dict[str, Any], Dict[str, Dict], Dict[str, Any]]:
    """
    The declared types, defaults, options and aggregate options of a configs object, which
    labml keeps in name-mangled fields of `BaseConfigs` (`_Configs__types`, ...).
    """
    def get(name):
        return object.__getattribute__(configs, f'_Configs__{name}')
    return get('types'), get('defaults'), get('options'), get('aggregates_options')


def withdraw_option(configs: BaseConfigs, key: str, name: str):
    """
    Take option `name` of `key` off one configs object, as if it had never been registered:
    for an option of a base class (labml_nn's) that cannot work here. labml has no public way
    to remove one, and changing the base class would change it for every user of labml_nn.
    """
    types, defaults, options, aggregates = configs_registry(configs)
    options.get(key, {}).pop(name, None)


def chosen_value(configs: BaseConfigs, key: str) -> Any:
    """
    What `key` is set to, without computing it: for an option, its name (`'learned_pos'`), not
    the object the option would build. labml resolves this in a private method.
    """
    get = object.__getattribute__
    # What was set (an override, a value, a default override), before the cached result
    value, found = get(configs, '_Configs__get_value_direct')(key)
    if found and value != '__aggregate__':
        return value
    # A default, or the first option
    defaults, options = get(configs, '_Configs__defaults'), get(configs, '_Configs__options')
    if key in defaults:
        return defaults[key]
    return next(iter(options.get(key, {})), None)


# labml's console output: the interface of a logger destination, and its terminal one
from labml.internal.logger.destinations import Destination  # noqa: E402,F401 (re-exported)
from labml.internal.logger.destinations.console import ConsoleDestination  # noqa: E402,F401 (re-exported)


def logger_destinations() -> list:
    """
    The destinations labml's logger writes every line to (a list, kept in a name-mangled field
    of its logger singleton), so that [console](console.html) can replace the terminal one.
    """
    from labml.internal.logger import logger_singleton
    return logger_singleton()._Logger__destinations


# labml's tracker: the interface of its writers, and its text indicator
from labml.internal.tracker.writers import Writer as TrackerWriter  # noqa: E402,F401 (re-exported)
from labml.internal.tracker.indicators.artifacts import Text as TextIndicator  # noqa: E402,F401 (re-exported)


def add_tracker_writer(writer: TrackerWriter):
    """Send the current run's tracked values to one more writer (after `experiment.start`, which resets them)."""
    from labml.internal.tracker import tracker_singleton
    tracker_singleton().add_writer(writer)


def run_configs() -> Dict[str, Dict[str, Any]]:
    """
    The current run's configs as labml writes them to `configs.yaml`: for each key its option
    name (`value`) and what it computed to (`computed`).
    """
    return _experiment().configs_processor.to_json()
