"""
# The run store

```
gpt-runs [NAME]                            (or python -m gpt_experiment.runs)
gpt-runs plot RUN [RUN ...] [-o curves.png]
gpt-runs compare RUN RUN [RUN ...]
```

labml keeps each run in `logs/<name>/<uuid>/` (`<uuid>.<rank>/` for each process of a
distributed run, rank 0 being the one that saves), `logs/` being beside the project's
`.labml.yaml`. This module is the only one that knows that layout; `--resume`, `generate`,
the listing below and any later command go through it:

* `project_path()`, `logs_path()`: the labml project around the current directory, and its `logs/`;
* `find_run(uuid_or_prefix)`: a run's folder from its full uuid or a unique prefix (a
  distributed run's `<uuid>.0` is that run); no match, or several, is one line naming them;
  `newest_run_with_checkpoint()`, the default of `generate`;
* `checkpoint_steps(run_dir)`, `find_checkpoint(run_dir, step)`: its complete checkpoints
  (judged by [checkpoints](checkpoints.html)), and the one to load: `step`, or the newest,
  refusing a damaged newest one with the name of the newest complete one;
* `load_checkpoint(checkpoint, name)`, `given_configs(run_dir)`: a checkpoint's file and the
  configs the run was given, read safely (its tokenizer: [tokenizers](tokenizers.html)' `load`);
* `status(run_dir)`, `read_run(run_dir)`, `list_runs(logs)`: what became of a run.

Everything is read back from what labml writes: `run.yaml` (uuid, name, start, `load_run`, the
parent of a resumed run), `configs.yaml`, `sqlite.db` (tracked values by global step, which
counts tokens), `run_log.jsonl` (how the run ended: completed, interrupted or crashed, with
the error), `pids/<rank>.pid` (the process, while it runs) and `checkpoints/<step>/`.

The listing shows each run's status (running, completed, interrupted, crashed, or `non-finite`
when it stopped on a NaN or infinite loss), its duration, its parent, the tokens it trained on,
its best validation loss and its complete checkpoints. A run whose files are damaged is skipped
with a one-line warning on stderr; the others are still listed.
"""

import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from . import checkpoints, commands
from .errors import UserError

# ## Where runs are

LABML_YAML = '.labml.yaml'


def project_root() -> Optional[Path]:
    """The folder with `.labml.yaml` at or above the current directory, if any."""
    cwd = Path.cwd().resolve()
    return next((d for d in (cwd, *cwd.parents) if (d / LABML_YAML).is_file()), None)


def project_path() -> Optional[str]:
    """
    What to give labml as `python_file`. labml finds `.labml.yaml` (and with it `data/` and
    `logs/`) by walking up from the file that creates the experiment, which for an installed
    package is not the user's project; inside a labml project, walk up from the current
    directory instead.
    """
    return str(Path.cwd().resolve()) if project_root() is not None else None


def logs_path() -> Path:
    """`logs/` of the labml project around the current directory (as `.labml.yaml` says)."""
    root = project_root()
    if root is None:
        raise UserError(f'not inside a labml project: no {LABML_YAML} here or in a parent folder')
    values = checkpoints.load_yaml(root / LABML_YAML) or {}
    if not isinstance(values, dict):
        raise UserError(f'{root / LABML_YAML} is not a mapping')
    return root / str(values.get('experiments_path', 'logs'))


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
    if not uuid_or_prefix or not checkpoints.is_plain_name(uuid_or_prefix):
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
    """The most recently started run that has a complete checkpoint (`generate`'s default)."""
    logs = logs_path() if logs is None else logs
    with_checkpoints = [r.path for r in list_runs(logs) if r.checkpoints]
    if not with_checkpoints:
        raise UserError(f'no run with a checkpoint in {logs}; train one first, or give --run')
    return with_checkpoints[-1]


# ## Checkpoints of a run

def checkpoint_steps(run_dir: Path) -> List[int]:
    """The steps of the complete checkpoints of a run, oldest first."""
    return checkpoints.steps_complete(run_dir / 'checkpoints')


def find_checkpoint(run_dir: Path, step: Optional[int] = None) -> Path:
    """
    The checkpoint folder to load: the one at `step`, or the newest. A damaged one is refused,
    never passed over in silence, with the newest complete one named.
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
        raise UserError(f'checkpoint {step} of run {run_dir.name} is damaged ({why}); {checkpoints.newest_complete(root, below=step)}')
    return root / str(step)


def load_checkpoint(checkpoint: Path, name: str = 'model') -> Any:
    """The state a checkpoint saved as `name` (`model`, `training`), loaded safely."""
    info = checkpoints.load_json(checkpoint / checkpoints.INFO)
    if name not in info:
        raise UserError(f'{checkpoint / checkpoints.INFO} names no {name}')
    try:
        return checkpoints.load_tensors(checkpoint / info[name])
    except UserError as e:
        raise UserError(f'{e}; {checkpoints.newest_complete(checkpoint.parent, below=int(checkpoint.name))}') from None


# ## What a run was given

def given_configs(run_dir: Path) -> Dict[str, Any]:
    """The values the run was given explicitly, from labml's `configs.yaml`."""
    path = run_dir / 'configs.yaml'
    configs = checkpoints.load_yaml(path)
    if not isinstance(configs, dict):
        raise UserError(f'{path} is not a labml configs file')
    return {k: v['value'] for k, v in configs.items()
            if isinstance(v, dict) and v.get('is_explicitly_specified') and 'value' in v}


def config_values(run_dir: Path) -> Dict[str, Any]:
    """Every config's value as the run recorded it (given, or set by an option), or `None`."""
    configs = checkpoints.load_yaml(run_dir / 'configs.yaml') or {}
    return {k: v.get('value') for k, v in configs.items() if isinstance(v, dict)} if isinstance(configs, dict) else {}


def config_value(run_dir: Path, key: str) -> Any:
    """A config's value as the run recorded it, or `None`."""
    return config_values(run_dir).get(key)


def run_info(run_dir: Path) -> Dict[str, Any]:
    """labml's `run.yaml`."""
    info = checkpoints.load_yaml(run_dir / 'run.yaml')
    if not isinstance(info, dict):
        raise UserError(f'{run_dir / "run.yaml"} is not a labml run file')
    return info


# ## What became of a run

def _sqlite(run_dir: Path, query: str, *args) -> list:
    db = run_dir / 'sqlite.db'
    if not db.is_file():
        return []
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
    valid = scalars(run_dir, 'loss.valid')
    return min(valid, key=lambda sv: sv[1]) if valid else None


def last_step(run_dir: Path) -> Optional[int]:
    """The last global step with a tracked value."""
    rows = _sqlite(run_dir, 'SELECT MAX(step) FROM scalars')
    return rows[0][0] if rows else None


def _ending(run_dir: Path) -> Optional[Dict[str, Any]]:
    """The last line labml wrote to `run_log.jsonl` when the run ended, if it ended."""
    path = run_dir / 'run_log.jsonl'
    if not path.is_file():
        return None
    lines = [line for line in path.read_text(encoding='utf-8', errors='replace').splitlines() if line.strip()]
    try:
        return json.loads(lines[-1]) if lines else None
    except ValueError:
        raise UserError(f'{path} is not labml run log') from None


def _pid(run_dir: Path) -> Optional[int]:
    pids = sorted((run_dir / 'pids').glob('*.pid'))
    try:
        return int(pids[0].read_text().strip()) if pids else None
    except (OSError, ValueError):
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
        return 'running' if pid is not None and checkpoints.process_alive(pid) else 'crashed'
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
    start = int(info.get('start_step') or 0)
    return Run(uuid=uuid_of(run_dir), name=run_dir.parent.name,
               start=f"{info.get('trial_date', '')} {info.get('trial_time', '')}".strip(),
               status=state, seconds=_duration(run_dir, state),
               parent=info.get('load_run') or None, tokens=None if last is None else last - start,
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


def _seconds(s: Optional[float]) -> str:
    if s is None:
        return '-'
    s = int(s)
    return f'{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}'


def format_runs(runs: List[Run]) -> str:
    rows = [('uuid', 'name', 'start', 'status', 'duration', 'parent', 'tokens', 'best valid', 'checkpoints')]
    for r in runs:
        rows.append((r.uuid, r.name, r.start, r.status, _seconds(r.seconds), r.parent or '-',
                     '-' if r.tokens is None else f'{r.tokens:,}',
                     '-' if r.best_valid_loss is None else f'{r.best_valid_loss:.4f}',
                     ', '.join(str(s) for s in r.checkpoints) or '-'))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return '\n'.join('  '.join(c.ljust(w) for c, w in zip(row, widths)) + '  ' + row[-1] for row in rows)


@commands.command
def main(argv: Optional[List[str]] = None) -> int:
    """The command line (`gpt-runs`; `argv` defaults to `sys.argv[1:]`)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ('-h', '--help'):
        print(__doc__.split('```')[1].strip())
        return 0
    if argv and argv[0] in ('plot', 'compare'):
        # `gpt-runs plot RUN ...`, `gpt-runs compare RUN RUN` ([compare](compare.html))
        from . import compare
        return compare.main(argv[0], argv[1:])
    if argv and not checkpoints.is_plain_name(argv[0]):
        raise UserError(f'not an experiment name: {argv[0]!r}')
    logs = logs_path()
    runs = list_runs(logs, argv[0] if argv else None)
    if not runs:
        print(f'no runs under {logs}')
        return 0
    print(format_runs(runs))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
