"""
# Comparing runs without a browser

```
gpt-runs plot RUN [RUN ...] [-o curves.png]
gpt-runs compare RUN RUN [RUN ...]
```

`plot` draws the training and validation loss of each run against the tokens it has trained on
(labml's global step counts tokens), with matplotlib, into a PNG: one colour a run, the training
loss a thin line, the validation loss a thicker one with its points marked, each labelled with
the run's name and the first 8 characters of its uuid.

`compare` prints the configs that differ between the runs (those given to any of them, as each
run recorded them) and each run's best validation loss with its step.

Runs are named by uuid or a unique prefix; everything is read through the [run store](runs.html).
"""

from pathlib import Path
from typing import Any, Dict, List

from . import commands, runs
from .errors import UserError


def _label(run_dir: Path) -> str:
    return f'{run_dir.parent.name} {runs.uuid_of(run_dir)[:8]}'


def plot(run_dirs: List[Path], output: Path) -> Path:
    """Draw the loss curves of `run_dirs` into the PNG `output`."""
    try:
        import matplotlib
    except ImportError:
        raise UserError('gpt-runs plot needs matplotlib: pip install "gpt-experiment[plot]"') from None
    # No display needed: draw straight into the file
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    colours = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for i, run_dir in enumerate(run_dirs):
        colour = colours[i % len(colours)]
        train, valid = runs.scalars(run_dir, 'loss.train'), runs.scalars(run_dir, 'loss.valid')
        if not train and not valid:
            raise UserError(f'run {_label(run_dir)} has no loss recorded yet')
        if train:
            ax.plot(*zip(*train), color=colour, linewidth=0.8, alpha=0.6, label=f'{_label(run_dir)} train')
        if valid:
            ax.plot(*zip(*valid), color=colour, linewidth=2, marker='o', markersize=3,
                    label=f'{_label(run_dir)} valid')
    ax.set_xlabel('tokens trained')
    ax.set_ylabel('loss (nats per token)')
    ax.set_title('Training and validation loss')
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(output, dpi=120)
    except OSError as e:
        raise UserError(f'cannot write {output}: {e.strerror}') from None
    finally:
        plt.close(fig)
    return output


def _shown(value: Any) -> str:
    return '-' if value is None else str(value)


def differing_configs(run_dirs: List[Path]) -> Dict[str, List[Any]]:
    """The configs given to any of the runs whose recorded values are not all the same."""
    given = [runs.given_configs(r) for r in run_dirs]
    keys = sorted(set().union(*given))
    values = {k: [g[k] if k in g else runs.config_value(r, k) for g, r in zip(given, run_dirs)] for k in keys}
    return {k: v for k, v in values.items() if len({repr(x) for x in v}) > 1}


def _best_valid(run_dir: Path) -> str:
    best = runs.best_valid(run_dir)
    return f'{best[1]:.4f} at step {best[0]:,}' if best else '-'


def compare(run_dirs: List[Path]) -> str:
    """A table: the configs that differ, then each run's best validation loss."""
    rows = [('', *(_label(r) for r in run_dirs))]
    differ = differing_configs(run_dirs)
    rows += [(k, *map(_shown, v)) for k, v in differ.items()]
    if not differ:
        rows.append(('(no config differs)', *('' for _ in run_dirs)))
    rows.append(('best valid loss', *(_best_valid(r) for r in run_dirs)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return '\n'.join('  '.join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def main(command: str, argv: List[str]) -> int:
    """`gpt-runs plot ...` and `gpt-runs compare ...`; `UserError`s are the caller's to print."""
    p = commands.Parser(prog=f'gpt-runs {command}')
    p.add_argument('runs', nargs='+', metavar='RUN', help='run uuids, or unique prefixes of them')
    if command == 'plot':
        p.add_argument('-o', '--output', default='curves.png', help='the PNG to write (default: %(default)s)')
    args = p.parse_args(argv)
    run_dirs = [runs.find_run(r) for r in args.runs]
    if command == 'plot':
        print(plot(run_dirs, Path(args.output)))
        return 0
    if len(run_dirs) < 2:
        raise UserError('gpt-runs compare needs two runs or more')
    print(compare(run_dirs))
    return 0
