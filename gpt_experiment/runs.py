"""
# The run store

labml keeps each run in `logs/<name>/<uuid>/` (`<uuid>.<rank>/` for each process of a
distributed run, rank 0 being the one that saves). This module is the only one that knows that
layout, and every command goes through it: `--resume`, `init_from`, `generate`, `evaluate`,
`gpt-runs`.

* **Where runs are**: `logs/` beside the nearest `.labml.yaml` at or above the current folder
  (as labml finds it), or `./logs` where there is none (`logs_path`).
* **Finding**: a run by its full uuid or a unique prefix (`find_run`; a distributed run's
  `<uuid>.0` is that run), or the newest run with a checkpoint; a checkpoint by its step, or
  the newest (`find_checkpoint`). No match, several, or a damaged newest checkpoint is one
  line naming what there is.
* **Reading**, always safely and always checked: the configs the run was given
  (`given_configs`, checked as the command line's overrides are), its tokenizer
  ([tokenizers](tokenizers.html)' `load`), a checkpoint's weights into a model
  (`load_weights`) and its training state (`training_state`). `load_model` rebuilds a run's
  model for `generate` and `evaluate`. Each damaged file is one line that names it.
* **What became of a run** (`read_run`, `list_runs`): its status, duration, parent, tokens,
  best validation loss and complete checkpoints, read back from what labml writes: `run.yaml`,
  `configs.yaml`, `sqlite.db`, `run_log.jsonl`, `pids/<rank>.pid` and `checkpoints/<step>/`.
"""

import json
import math
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import yaml

from . import checkpoints, files, tokenizers
from .errors import UserError

# ## Where runs are

LABML_YAML = '.labml.yaml'
# What labml accepts in `.labml.yaml`
LABML_KEYS = {'check_repo_dirty', 'data_path', 'experiments_path', 'analytics_path', 'analytics_templates',
              'web_api', 'web_api_frequency', 'web_api_verify_connection', 'web_api_open_browser', 'indicators'}


# Values a run's or a project's YAML file may hold, an alias's values counted at each use
MAX_YAML_VALUES = 1_000_000


def load_yaml(path: Path) -> Any:
    """A YAML file of a run or a project, without Python tags; one line when damaged."""
    text = files.read_text(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f'{path} is not valid YAML ({" ".join(str(e).split())[:200]})') from None
    # Aliases nest: nine lines of nine aliases each make 9^9 values ("a billion laughs"), which
    # load as shared references but take forever to check or print. Count them, and stop early.
    # (A preset refuses aliases of lists and mappings outright, `overrides._PresetLoader`; files
    # that labml writes may hold some, of objects two configs share.)
    stack, count = [data], 0
    while stack:
        value = stack.pop()
        count += 1
        if count > MAX_YAML_VALUES:
            raise UserError(f'{path} holds over {MAX_YAML_VALUES:,} values once its YAML aliases are followed')
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return data


def _labml_yamls() -> List[Path]:
    """Every `.labml.yaml` at or above the current folder, nearest first: labml merges them all."""
    cwd = Path.cwd().resolve()
    return [d / LABML_YAML for d in (cwd, *cwd.parents) if (d / LABML_YAML).is_file()]


def check_project():
    """Refuse a damaged `.labml.yaml` in one line, before labml reads it (and fails with a traceback)."""
    for path in _labml_yamls():
        values = load_yaml(path)
        if values is not None and not isinstance(values, dict):
            raise UserError(f'{path} is not a mapping of labml settings')
        unknown = sorted(set(values or {}) - LABML_KEYS)
        if unknown:
            raise UserError(f'{path}: unknown labml setting {unknown[0]!r}')
        for key in ('data_path', 'experiments_path'):
            if key in (values or {}) and not isinstance(values[key], str):
                raise UserError(f'{path}: {key} must be a folder name')


def project_path() -> str:
    """
    What to give labml as `python_file`. labml finds `.labml.yaml` (and with it `data/` and
    `logs/`) by walking up from the file that creates the experiment, which for an installed
    package is not the user's folder: walk up from the current folder instead, which is also
    where `logs/` goes when there is no `.labml.yaml` at all.
    """
    check_project()
    return str(Path.cwd().resolve())


def logs_path() -> Path:
    """`logs/` of the labml project around the current folder (as `.labml.yaml` says), or `./logs`."""
    check_project()
    found = _labml_yamls()
    if not found:
        return Path.cwd().resolve() / 'logs'
    # labml merges the files from the top down, and the nearest one names the root.
    values = {}
    for path in reversed(found):
        values.update(load_yaml(path) or {})
    return found[0].parent / values.get('experiments_path', 'logs')


def uuid_of(run_dir: Path) -> str:
    """The run's uuid: its folder's name, less the `.0` of rank 0 of a distributed run."""
    return run_dir.name.split('.')[0]


def run_folders(logs: Path, name: Optional[str] = None) -> List[Path]:
    """The folders of every run (rank 0 only for a distributed run), in name and uuid order."""
    if not logs.is_dir():
        return []
    names = [logs / name] if name else sorted(p for p in logs.iterdir() if p.is_dir())
    return sorted((r for n in names if n.is_dir() for r in n.iterdir()
                   if r.is_dir() and r.name.split('.')[-1] in (r.name, '0') and not r.name.startswith('.')),
                  key=lambda r: (r.parent.name, r.name))


def find_run(uuid_or_prefix: str, logs: Optional[Path] = None) -> Path:
    """A run folder from its full uuid or a unique prefix of it."""
    if not uuid_or_prefix or not files.is_plain_name(uuid_or_prefix):
        raise UserError(f'not a run uuid: {uuid_or_prefix!r}')
    logs = logs_path() if logs is None else logs
    every = run_folders(logs)
    # A full uuid matches exactly, even when it is also the prefix of another.
    matches = ([r for r in every if uuid_of(r) == uuid_or_prefix]
               or [r for r in every if uuid_of(r).startswith(uuid_or_prefix)])
    if len(matches) == 1:
        run_info(matches[0])  # a damaged `run.yaml` is named here, whatever the command
        return matches[0]
    listing = ', '.join(f'{r.parent.name}/{uuid_of(r)}' for r in (matches or every)[:20]) or 'none'
    if matches:
        raise UserError(f'run prefix {uuid_or_prefix!r} is ambiguous: {listing}')
    raise UserError(f'no run {uuid_or_prefix!r} in {logs}; runs: {listing}')


def newest_run_with_checkpoint(logs: Optional[Path] = None) -> Path:
    """The most recently started run that has a complete checkpoint (the default of `generate`)."""
    logs = logs_path() if logs is None else logs
    with_checkpoints = [r.path for r in list_runs(logs) if r.checkpoints]
    if not with_checkpoints:
        raise UserError(f'no run with a checkpoint in {logs}; train one first, or give --run')
    return with_checkpoints[-1]


def run_file(run_dir: Path, name: str) -> Path:
    """
    A file of a run folder, refused in one line when it is a link that points outside the
    folder (what it reads is then someone else's file); the reading rule ([files](files.html))
    refuses anything but a regular file.
    """
    path = run_dir / name
    if path.is_symlink() and not path.resolve().is_relative_to(run_dir.resolve()):
        raise UserError(f'{path} is a link out of the run folder')
    return path


def tokenizer(run_dir: Path, checkpoint: Optional[Path] = None):
    """
    The run's `tokenizer.json`; with a `checkpoint`, checked to be the tokenizer its weights were
    trained with (the digest in its `info.json`; checkpoints from before it was recorded have none).
    """
    run_file(run_dir, tokenizers.FILE_NAME)
    vocabulary = tokenizers.load(run_dir)
    if checkpoint is not None:
        info = checkpoints.load_info(checkpoint)
        recorded = info.get(checkpoints.TOKENIZER) if isinstance(info, dict) else None
        if recorded is not None and recorded != tokenizers.digest(vocabulary):
            raise UserError(f'{run_dir / tokenizers.FILE_NAME} has changed since checkpoint {checkpoint.name} was '
                            f'saved: it is not the tokenizer the weights were trained with')
    return vocabulary


# ## Checkpoints of a run

def checkpoint_steps(run_dir: Path) -> List[int]:
    """The steps of the complete checkpoints of a run (their weights load), oldest first."""
    return checkpoints.steps_complete(run_dir / 'checkpoints')


def find_checkpoint(run_dir: Path, step: Optional[int] = None, need=(checkpoints.WEIGHTS,)) -> Path:
    """
    The checkpoint folder to load, with the files `need` names: the one at `step`, or the
    newest. A damaged one is refused, never passed over in silence, with the newest complete
    one named.
    """
    root = run_dir / 'checkpoints'
    every = checkpoints.steps(root)
    if not every:
        raise UserError(f'run {run_dir.name} has no checkpoints')
    if step is None:
        step = every[-1]
    elif step not in every:
        raise UserError(f'run {run_dir.name} has no checkpoint at step {step}; '
                        f'it has: {", ".join(map(str, checkpoint_steps(run_dir))) or "none complete"}')
    why = checkpoints.problem(root / str(step))
    if why is not None:
        raise UserError(f'checkpoint {step} of run {run_dir.name} is damaged ({why}); '
                        f'{checkpoints.newest_complete(root, below=step)}')
    lacking = checkpoints.problem(root / str(step), need)
    if lacking is not None:
        raise UserError(f'checkpoint {step} of run {run_dir.name} has its weights but not its training state '
                        f'({lacking}), so it cannot be resumed; generate reads it, and '
                        f'init_from={uuid_of(run_dir)}:{step} starts a new run from its weights')
    return root / str(step)


def find(run: Optional[str], step: Optional[int] = None, need=(checkpoints.WEIGHTS,)) -> Tuple[Path, Path]:
    """The run (a uuid or prefix; the newest with a checkpoint when `None`) and its checkpoint to load."""
    run_dir = find_run(run) if run is not None else newest_run_with_checkpoint()
    return run_dir, find_checkpoint(run_dir, step, need)


def find_ref(ref: str, what: str = '') -> Tuple[Path, Path]:
    """`RUN[:STEP]`, as `init_from` and `gpt-export` take it: the run and its checkpoint. `what` prefixes the error."""
    run, colon, step = ref.partition(':')
    if colon and not step.isdigit():
        raise UserError(f'{what}{ref!r}: the step after ":" must be a checkpoint step (a number)')
    return find(run, int(step) if colon else None)


def _file(checkpoint: Path, name: str) -> Path:
    """The file a checkpoint saved as `name` (`model`, `training`)."""
    info = checkpoints.files_of(checkpoint)
    if name not in info:
        raise UserError(f'{checkpoint / checkpoints.INFO} names no {name}')
    return checkpoint / info[name]


def _newest_other(checkpoint: Path, e: UserError) -> UserError:
    return UserError(f'{e}; {checkpoints.newest_complete(checkpoint.parent, below=int(checkpoint.name))}')


def load_weights(model, checkpoint: Path, why: str = ''):
    """Load a checkpoint's weights into `model`, or say in one line why they do not fit it."""
    try:
        with checkpoints.reading(checkpoint):
            checkpoints.load_weights(model, _file(checkpoint, checkpoints.WEIGHTS))
    except UserError as e:
        raise UserError(f'{e}{why}') if 'does not load into' in str(e) else _newest_other(checkpoint, e) from None


def training_state(checkpoint: Path) -> Dict[str, Any]:
    """A checkpoint's training state, for `--resume`; one line when it cannot be resumed."""
    from .trainer import STATE_FORMAT
    try:
        with checkpoints.reading(checkpoint):
            state = checkpoints.load_tensors(_file(checkpoint, checkpoints.TRAINING))
    except UserError as e:
        raise _newest_other(checkpoint, e) from None
    if not isinstance(state, dict) or state.get('format') != STATE_FORMAT:
        raise UserError(f'{checkpoint} was saved by an earlier version of gpt_experiment and cannot be resumed; '
                        f'generate and evaluate still read it, and init_from={uuid_of(checkpoint.parent.parent)}:'
                        f'{checkpoint.name} starts a new run from its weights')
    return state


# ## What a run was given

def _configs_file(run_dir: Path) -> Dict[str, Any]:
    path = run_file(run_dir, 'configs.yaml')
    configs = load_yaml(path)
    if not isinstance(configs, dict) or not all(isinstance(v, dict) for v in configs.values()):
        raise UserError(f'{path} is not a labml configs file')
    return configs


def given_configs(run_dir: Path) -> Dict[str, Any]:
    """
    The values the run was given explicitly, from labml's `configs.yaml`, checked as the
    command line's are: a key this version does not know, or a value of the wrong type, is
    one line naming the file.
    """
    from .configs import Configs
    from .overrides import check_overrides
    given = {k: v['value'] for k, v in _configs_file(run_dir).items()
             if v.get('is_explicitly_specified') and 'value' in v}
    try:
        return check_overrides(Configs, given)
    except UserError as e:
        raise UserError(f'{run_dir / "configs.yaml"}: {e}') from None


def config_values(run_dir: Path) -> Dict[str, Any]:
    """Every config's value as the run recorded it (given, or set by an option)."""
    return {k: v.get('value') for k, v in _configs_file(run_dir).items()}


def check_device(name: str):
    """`--device`, checked by putting a tensor there: a device that does not exist, or CUDA with a
    torch built without it, is a `UserError` of one line."""
    import torch
    try:
        device = torch.device(name)
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError, NotImplementedError) as e:
        raise UserError(f'--device {name}: {str(e).strip().splitlines()[0]}') from None
    if device.type == 'meta':
        raise UserError('--device meta: meta tensors hold no values to generate from')
    return device


def load_model(run_dir: Path, checkpoint: Path, device: str):
    """
    The run's model with the checkpoint's weights, on `device` (checked), in eval mode, with
    its configs and tokenizer: the configs it was given applied to a fresh `Configs`, the
    vocabulary size from its saved tokenizer, so that nothing reads the corpus.
    """
    from labml import experiment
    from .configs import Configs
    device = check_device(device)
    vocabulary = tokenizer(run_dir, checkpoint)
    overrides = given_configs(run_dir)
    overrides['n_tokens'] = vocabulary.n_tokens
    conf = Configs()
    experiment.configs(conf, overrides)
    model = conf.model
    load_weights(model, checkpoint, f'; the model is built from {run_dir / "configs.yaml"} and '
                                    f'{run_dir / tokenizers.FILE_NAME}')
    return model.to(device).eval(), conf, vocabulary


def run_info(run_dir: Path) -> Dict[str, Any]:
    """labml's `run.yaml`."""
    info = load_yaml(run_file(run_dir, 'run.yaml'))
    if not isinstance(info, dict):
        raise UserError(f'{run_dir / "run.yaml"} is not a labml run file')
    return info


# ## What became of a run

def _sqlite(run_dir: Path, query: str, *args) -> list:
    db = run_file(run_dir, 'sqlite.db')
    if not db.exists():
        return []
    files.regular_file(db)
    try:
        conn = sqlite3.connect(f'file:{db}?mode=ro', uri=True)
        try:
            return conn.execute(query, args).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        raise UserError(f'{db} is not a labml sqlite database') from None


def scalars(run_dir: Path, indicator: str) -> List[Tuple[int, float]]:
    """`(step, value)` of an indicator from labml's `sqlite.db`, in step order."""
    return _sqlite(run_dir, 'SELECT step, value FROM scalars WHERE indicator = ? ORDER BY step', indicator)


def best_valid(run_dir: Path) -> Optional[Tuple[int, float]]:
    """`(step, loss)` of the lowest validation loss the run recorded, or `None`."""
    valid = [(s, v) for s, v in scalars(run_dir, 'loss.valid') if isinstance(v, float) and math.isfinite(v)]
    return min(valid, key=lambda sv: sv[1]) if valid else None


def last_step(run_dir: Path) -> Optional[int]:
    """The last global step with a tracked value."""
    rows = _sqlite(run_dir, 'SELECT MAX(step) FROM scalars')
    return rows[0][0] if rows and isinstance(rows[0][0], int) else None


def _ending(run_dir: Path) -> Optional[Dict[str, Any]]:
    """The last line labml wrote to `run_log.jsonl` when the run ended, if it ended."""
    path = run_file(run_dir, 'run_log.jsonl')
    if not path.exists():
        return None
    lines = [line for line in files.read_text(path).splitlines() if line.strip()]
    try:
        ending = json.loads(lines[-1]) if lines else None
    except ValueError:
        ending = None
    if lines and not isinstance(ending, dict):
        raise UserError(f'{path} is not a labml run log')
    return ending


def _pid(run_dir: Path) -> Optional[int]:
    pids = sorted((run_file(run_dir, 'pids')).glob('*.pid'))
    try:
        return int(files.read_text(pids[0], max_bytes=64).strip()) if pids else None
    except (UserError, ValueError):
        return None


def status(run_dir: Path) -> str:
    """
    `completed`, `interrupted` (Ctrl-C or SIGTERM), `non-finite` (stopped on a NaN or infinite
    loss), `crashed` (any other error, or a process that is gone without saying how it ended:
    `kill -9`, a power cut), or `running` (its process is alive, on this machine).
    """
    ending = _ending(run_dir)
    if ending is None:
        pid = _pid(run_dir)
        return 'running' if pid is not None and files.process_alive(pid) else 'crashed'
    if ending.get('status') == 'crashed' and 'loss is not finite' in str(ending.get('details')):
        return 'non-finite'
    return str(ending.get('status'))


class Run(NamedTuple):
    uuid: str
    name: str
    start: str
    status: str
    seconds: Optional[float]
    parent: Optional[str]
    tokens: Optional[int]
    best_valid_loss: Optional[float]
    checkpoints: List[int]
    path: Path


def _duration(run_dir: Path, state: str) -> Optional[float]:
    """
    From labml's pid file (written at the start) to the end in `run_log.jsonl`; to now while it
    runs; for a process that is gone without a word, to the last tracked value it wrote.
    """
    pids = sorted((run_dir / 'pids').glob('*.pid'))
    if not pids:
        return None
    started = pids[0].stat().st_mtime
    ending = _ending(run_dir)
    if ending is not None and isinstance(ending.get('time'), (int, float)):
        return ending['time'] - started
    if state == 'running':
        return time.time() - started
    db = run_dir / 'sqlite.db'
    return db.stat().st_mtime - started if db.is_file() else None


def read_run(run_dir: Path) -> Run:
    """Everything the listing shows of a run; a damaged file is a `UserError` that names it."""
    info = run_info(run_dir)
    state = status(run_dir)
    best = best_valid(run_dir)
    last = last_step(run_dir)
    try:
        start = int(info.get('start_step') or 0)
    except (TypeError, ValueError):
        raise UserError(f'{run_dir / "run.yaml"}: start_step is not a number') from None
    parent = info.get('load_run')
    return Run(uuid=uuid_of(run_dir), name=run_dir.parent.name,
               start=f"{info.get('trial_date', '')} {info.get('trial_time', '')}".strip(),
               status=state, seconds=_duration(run_dir, state),
               parent=str(parent) if parent else None, tokens=None if last is None else last - start,
               best_valid_loss=best[1] if best else None,
               checkpoints=checkpoint_steps(run_dir), path=run_dir)


def list_runs(logs: Path, name: Optional[str] = None) -> List[Run]:
    """Every run under `logs/` (or `logs/<name>/`), oldest first; damaged ones are skipped with a warning."""
    runs = []
    for folder in run_folders(logs, name):
        try:
            runs.append(read_run(folder))
        except (UserError, OSError) as e:
            print(f'warning: skipping run {folder.parent.name}/{folder.name}: {e}', file=sys.stderr)
    return sorted(runs, key=lambda r: (r.start, r.uuid))
