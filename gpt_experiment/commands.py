"""
# What every command line does alike

`gpt-train` ([main](main.html)), `gpt-generate`, `gpt-evaluate`, `gpt-runs` and
`gpt-dashboard` parse their arguments with `Parser`, and their `run` or `main` is a `@command`.
So every one of them ends the same way, with one line on stderr and an exit status:

* bad input, a damaged run, a file that cannot be written (a `UserError`, [errors](errors.html)):
  `error: ...`, 2, never a traceback nor argparse's usage message;
* a loss that is not finite ([metrics](metrics.html)): `error: ...`, 3;
* Ctrl-C: `interrupted`, 130; SIGTERM ([stops](stops.html)): `terminated`, 143;
* otherwise nothing, and 0.
"""

import argparse
import functools
import sys
from typing import Callable, Optional

from . import stops
from .errors import UserError
from .metrics import LossNotFinite


class Parser(argparse.ArgumentParser):
    """argparse's parser, but a bad argument is a `UserError` (one line, exit 2), not a usage message."""

    def error(self, message):
        raise UserError(message)


def command(body: Callable[..., Optional[int]]) -> Callable[..., int]:
    """A command line's body, made to return its exit status (the table above) instead of raising."""
    @functools.wraps(body)
    def run(*args, **kwargs) -> int:
        try:
            return body(*args, **kwargs) or 0
        except UserError as e:
            print(f'error: {e}', file=sys.stderr)
            return 2
        except LossNotFinite as e:
            print(f'error: {e}; stopped without saving, the last checkpoint is kept', file=sys.stderr)
            return 3
        except KeyboardInterrupt as e:
            # 130 for Ctrl-C, 143 for SIGTERM, as a shell reports a process stopped by the signal
            status = stops.exit_status(e)
            print('interrupted' if status == 130 else 'terminated', file=sys.stderr)
            return status
    return run
