"""
# End-of-run summary

What a user wants to know when a run ends, in a few lines: the best validation loss and the
step it was reached at, the training speed in tokens per second (labml's global step counts
tokens), the wall time, where the checkpoints are, and the run's page on the dashboard when it
was sent to one. The losses are read back from the run's `sqlite.db`, as labml recorded them.
"""

from pathlib import Path
from typing import Optional

from labml import logger
from labml.logger import Text

from . import runs


def summarize(run_dir: Path, *, tokens: int, seconds: float, dashboard_url: Optional[str]) -> str:
    valid = runs.scalars(run_dir, 'loss.valid')
    best = runs.best_valid(run_dir)
    ckpts = runs.checkpoint_steps(run_dir)
    lines = [
        ('best valid loss', f'{best[1]:.4f} at step {best[0]:,}' if best else '- (no validation loss recorded)'),
        # with `valid_batches`, the only one over the whole validation split
        ('last valid loss', f'{valid[-1][1]:.4f} at step {valid[-1][0]:,}' if valid else '-'),
        ('tokens/s', f'{tokens / seconds:,.0f} ({tokens:,} tokens)' if seconds > 0 else '-'),
        ('wall time', f'{seconds:.1f} s'),
        ('checkpoints', f'{run_dir / "checkpoints"}' + (f' (steps {", ".join(map(str, ckpts))})' if ckpts else ' (none)')),
    ]
    if dashboard_url:
        lines.append(('dashboard', dashboard_url))
    return '\n'.join(f'{k + ":":<17}{v}' for k, v in lines)


def report(run_dir: Path, *, tokens: int, seconds: float, dashboard_url: Optional[str]):
    """Print the summary through labml's logger."""
    logger.log('Run summary', Text.title)
    for line in summarize(run_dir, tokens=tokens, seconds=seconds, dashboard_url=dashboard_url).splitlines():
        logger.log(line)
