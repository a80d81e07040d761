"""
# Reports on runs

What a user reads about runs, all from what the [run store](runs.html) reads back:

* `summary`: what a user wants to know when a run ends (or is stopped): the best and the last
  validation loss with their steps, the training speed in tokens per second (labml's global
  step counts tokens), the wall time, the checkpoints and the disk they use, and the run's
  page on the dashboard when it was sent to one;
* `format_runs`: the table of `gpt-runs`;
* `compare`: the configs that differ between runs (as each run had them, given or not) and
  each one's best validation loss (`gpt-runs compare`);
* `plot`: the training and validation loss of each run against the tokens it trained on, into
  a PNG (`gpt-runs plot`, with matplotlib): one colour a run, the training loss a thin line,
  the validation loss a thicker one with its points marked.

```
gpt-runs [NAME]                              (python -m gpt_experiment.reports)
gpt-runs plot RUN [RUN ...] [-o curves.png]
gpt-runs compare RUN RUN [RUN ...]
```
"""

import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from labml import logger
from labml.logger import Text

from . import commands, files, runs
from .errors import UserError


# ## The end-of-run summary

def _disk(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob('*') if f.is_file()) if folder.is_dir() else 0


def summarize(run_dir: Path, *, tokens: int, seconds: float, dashboard_url: Optional[str]) -> str:
    valid = runs.scalars(run_dir, 'loss.valid')
    best = runs.best_valid(run_dir)
    ckpts = runs.checkpoint_steps(run_dir)
    # the losses come from labml's sqlite writer; without it the run keeps none
    none = '- (not tracked: --writers has no sqlite)' if not (run_dir / 'sqlite.db').exists() else \
        '- (no validation loss recorded)'
    lines = [
        ('best valid loss', f'{best[1]:.4f} at step {best[0]:,}' if best else none),
        # with `valid_batches`, the only one over the whole validation split
        ('last valid loss', f'{valid[-1][1]:.4f} at step {valid[-1][0]:,}' if valid else '-'),
        ('tokens/s', f'{tokens / seconds:,.0f} ({tokens:,} tokens)' if seconds > 0 else '-'),
        ('wall time', f'{seconds:.1f} s'),
        ('checkpoints', f'{run_dir / "checkpoints"}' + (f' (steps {", ".join(map(str, ckpts))}; '
                                                         f'{_disk(run_dir / "checkpoints") / 2 ** 20:,.1f} MB)'
                                                         if ckpts else ' (none)')),
    ]
    if dashboard_url:
        lines.append(('dashboard', dashboard_url))
    return '\n'.join(f'{k + ":":<17}{v}' for k, v in lines)


def summary(run_dir: Path, *, tokens: int, seconds: float, dashboard_url: Optional[str]):
    """Print the summary through labml's logger."""
    logger.log('Run summary', Text.title)
    for line in summarize(run_dir, tokens=tokens, seconds=seconds, dashboard_url=dashboard_url).splitlines():
        logger.log(line)


# ## The runs table

def _seconds(s: Optional[float]) -> str:
    if s is None:
        return '-'
    s = int(s)
    return f'{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}'


def format_runs(rows_of: List[runs.Run]) -> str:
    rows = [('uuid', 'name', 'start', 'status', 'duration', 'parent', 'tokens', 'best valid', 'checkpoints')]
    for r in rows_of:
        rows.append((r.uuid, r.name, r.start, r.status, _seconds(r.seconds), r.parent or '-',
                     '-' if r.tokens is None else f'{r.tokens:,}',
                     '-' if r.best_valid_loss is None else f'{r.best_valid_loss:.4f}',
                     ', '.join(str(s) for s in r.checkpoints) or '-'))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return '\n'.join('  '.join(c.ljust(w) for c, w in zip(row, widths)) + '  ' + row[-1] for row in rows)


# ## Comparing runs

def _label(run_dir: Path) -> str:
    return f'{run_dir.parent.name} {runs.uuid_of(run_dir)[:8]}'


def plot(run_dirs: List[Path], output: Path) -> Path:
    """Draw the loss curves of `run_dirs` into the PNG `output` (`curves.png` in it, when a folder)."""
    output = Path(output)
    if output.is_dir():
        output = output / 'curves.png'
    if output.suffix.lower() != '.png':
        raise UserError(f'gpt-runs plot draws a PNG: give -o NAME.png, not {str(output)!r}')
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
        fig.savefig(output, dpi=120, format='png')
    except OSError as e:
        raise files.cannot_write(output, e) from None
    finally:
        plt.close(fig)
    return output


def _shown(value: Any) -> str:
    return '-' if value is None else str(value)


def effective(key: str, given: Dict[str, Any], recorded: Dict[str, Any]) -> Any:
    """
    What `key` was in a run: the value it was `given`, else the one labml `recorded` (an
    option's name, or what it computed to), else the value the key is declared with.
    """
    from .configs import Configs
    from .overrides import config_keys
    if key in given:
        return given[key]
    if recorded.get(key) is not None:
        return recorded[key]
    declared = config_keys(Configs).get(key)
    if declared is None:
        return None
    return declared.default if declared.default is not None else (declared.options or [None])[0]


def differing_configs(run_dirs: List[Path]) -> Dict[str, List[Any]]:
    """The configs given to any of the runs whose values in the runs are not all the same."""
    given = [runs.given_configs(r) for r in run_dirs]
    recorded = [runs.config_values(r) for r in run_dirs]
    keys = sorted(set().union(*given))
    values = {k: [effective(k, g, c) for g, c in zip(given, recorded)] for k in keys}
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


# ## gpt-runs

RUNS_USAGE = '''usage: gpt-runs [NAME]                        list the runs (of experiment NAME)
       gpt-runs plot RUN [RUN ...] [-o curves.png]   training and validation loss against tokens
       gpt-runs compare RUN RUN [RUN ...]    the configs that differ, and each best valid loss'''


@commands.command
def main(argv: Optional[List[str]] = None) -> int:
    """`gpt-runs`."""
    argv = commands.argv_of(argv)
    if argv and argv[0] in ('-h', '--help'):
        print(RUNS_USAGE)
        return 0
    if argv and argv[0] in ('plot', 'compare'):
        p = commands.Parser(prog=f'gpt-runs {argv[0]}')
        p.add_argument('runs', nargs='+', metavar='RUN', help='run uuids, or unique prefixes of them')
        if argv[0] == 'plot':
            p.add_argument('-o', '--output', default='curves.png', help='the PNG to write (default: %(default)s)')
        args = p.parse_args(argv[1:])
        run_dirs = [runs.find_run(r) for r in args.runs]
        if argv[0] == 'plot':
            print(plot(run_dirs, args.output))
        elif len(run_dirs) < 2:
            raise UserError('gpt-runs compare needs two runs or more')
        else:
            # (the configs each run was given are checked against `Configs`, which imports torch)
            with commands.held_signals():
                from . import configs  # noqa: F401
            print(compare(run_dirs))
        return 0
    if len(argv) > 1 or (argv and (argv[0].startswith('-') or not files.is_plain_name(argv[0]))):
        raise UserError(f'gpt-runs takes an experiment name, or plot or compare, not {" ".join(argv)!r}; '
                        f'see gpt-runs --help')
    logs = runs.logs_path()
    if argv and not (logs / argv[0]).is_dir():
        names = sorted(p.name for p in logs.iterdir() if p.is_dir()) if logs.is_dir() else []
        raise UserError(f'no experiment {argv[0]!r} in {logs}; there are: {", ".join(names) or "none"} '
                        f'(gpt-runs plot and gpt-runs compare take runs)')
    found = runs.list_runs(logs, argv[0] if argv else None)
    if not found:
        print(f'no runs under {logs}')
        return 0
    print(format_runs(found))
    return 0


if __name__ == '__main__':
    sys.exit(main())


