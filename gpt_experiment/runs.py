"""
# Runs

```
python -m gpt_experiment.runs [NAME]
```

lists the runs labml keeps under `logs/` (of the labml project around the current directory):
uuid, name, start time, steps, last validation loss and checkpoints. Everything is read back
from what labml writes in each run's folder: `run.yaml` (uuid, name, date and time),
`sqlite.db` (the tracked values, by global step, which counts tokens) and
`checkpoints/<step>/`.
"""

import sqlite3
import sys
from pathlib import Path
from typing import List, NamedTuple, Optional, Tuple

import yaml

from .errors import UserError


class Run(NamedTuple):
    uuid: str
    name: str
    start: str
    steps: Optional[int]
    last_valid_loss: Optional[float]
    checkpoints: List[int]
    path: Path


def logs_path() -> Path:
    """`logs/` of the labml project around the current directory (as `.labml.yaml` says)."""
    cwd = Path.cwd().resolve()
    for d in (cwd, *cwd.parents):
        config = d / '.labml.yaml'
        if config.is_file():
            values = yaml.safe_load(config.read_text(encoding='utf-8')) or {}
            return d / values.get('experiments_path', 'logs')
    raise UserError('not inside a labml project: no .labml.yaml here or in a parent folder')


def scalars(run_dir: Path, indicator: str) -> List[Tuple[int, float]]:
    """`(step, value)` of an indicator from labml's `sqlite.db`, in step order."""
    db = run_dir / 'sqlite.db'
    if not db.is_file():
        return []
    conn = sqlite3.connect(f'file:{db}?mode=ro', uri=True)
    try:
        return conn.execute('SELECT step, value FROM scalars WHERE indicator = ? ORDER BY step',
                            (indicator,)).fetchall()
    except sqlite3.DatabaseError:
        return []
    finally:
        conn.close()


def last_step(run_dir: Path) -> Optional[int]:
    """The last global step with a tracked value."""
    db = run_dir / 'sqlite.db'
    if not db.is_file():
        return None
    conn = sqlite3.connect(f'file:{db}?mode=ro', uri=True)
    try:
        return conn.execute('SELECT MAX(step) FROM scalars').fetchone()[0]
    except sqlite3.DatabaseError:
        return None
    finally:
        conn.close()


def checkpoints(run_dir: Path) -> List[int]:
    """Global steps with a saved model, `checkpoints/<step>/model.pth`."""
    root = run_dir / 'checkpoints'
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / 'model.pth').is_file())


def read_run(run_dir: Path) -> Optional[Run]:
    """A run folder, or `None` when it has no `run.yaml`."""
    try:
        info = yaml.safe_load((run_dir / 'run.yaml').read_text(encoding='utf-8')) or {}
    except (OSError, yaml.YAMLError):
        return None
    valid = scalars(run_dir, 'loss.valid')
    return Run(uuid=str(info.get('uuid', run_dir.name)), name=str(info.get('name', run_dir.parent.name)),
               start=f"{info.get('trial_date', '')} {info.get('trial_time', '')}".strip(),
               steps=last_step(run_dir), last_valid_loss=valid[-1][1] if valid else None,
               checkpoints=checkpoints(run_dir), path=run_dir)


def list_runs(logs: Path, name: Optional[str] = None) -> List[Run]:
    """Every run under `logs/<name>/<uuid>/`, oldest first."""
    if not logs.is_dir():
        return []
    folders = [logs / name] if name else sorted(p for p in logs.iterdir() if p.is_dir())
    runs = [read_run(r) for f in folders if f.is_dir() for r in f.iterdir() if r.is_dir()]
    return sorted((r for r in runs if r is not None), key=lambda r: (r.start, r.uuid))


def format_runs(runs: List[Run]) -> str:
    rows = [('uuid', 'name', 'start', 'steps', 'valid loss', 'checkpoints')]
    for r in runs:
        ckpts = ', '.join(str(s) for s in r.checkpoints) if r.checkpoints else '-'
        rows.append((r.uuid, r.name, r.start, '-' if r.steps is None else f'{r.steps:,}',
                     '-' if r.last_valid_loss is None else f'{r.last_valid_loss:.4f}', ckpts))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return '\n'.join('  '.join(c.ljust(w) for c, w in zip(row, widths)) + '  ' + row[-1] for row in rows)


def main(argv: Optional[List[str]] = None) -> int:
    """The command line (`gpt-runs`; `argv` defaults to `sys.argv[1:]`)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ('-h', '--help'):
        print(__doc__.split('```')[1].strip())
        return 0
    try:
        logs = logs_path()
        runs = list_runs(logs, argv[0] if argv else None)
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    if not runs:
        print(f'no runs under {logs}')
        return 0
    print(format_runs(runs))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
