"""
# What every command line does alike

`gpt-train` ([main](main.html)), `gpt-generate` ([generate](generate.html)), `gpt-evaluate`
([evaluate](evaluate.html)), `gpt-runs` ([reports](reports.html)) and `gpt-dashboard`
([dashboard](dashboard.html)) parse their arguments with `Parser`, and each is a `@command`, so
every one of them ends the same way, with one line on stderr and an exit status:

* bad input, a damaged run, a file that cannot be written (a `UserError`, [errors](errors.html)):
  `error: ...`, 2, never a traceback nor argparse's usage message;
* a loss that is not finite: `error: ...`, 3;
* Ctrl-C: `interrupted`, 130; SIGTERM: `terminated`, 143 (training saves a checkpoint first:
  [trainer](trainer.html));
* otherwise nothing, and 0.

The command modules import torch only once their arguments are parsed, so that `--help`
answers at once, and with the signals held back ([`held_signals`](#held_signals)), so that
Ctrl-C or SIGTERM during those imports is one line too.
"""

import argparse
import contextlib
import functools
import os
import signal
import sys
import threading
from typing import Callable, List, Optional

from .errors import LossNotFinite, UserError

# labml's writers a run takes (`--writers`), and those it writes to unless told otherwise
KNOWN_WRITERS = ('screen', 'sqlite', 'web_api', 'tensorboard', 'file')
DEFAULT_WRITERS = ('screen', 'sqlite', 'web_api')


class Parser(argparse.ArgumentParser):
    """argparse's parser, but a bad argument is a `UserError` (one line, exit 2), not a usage message."""

    def error(self, message):
        raise UserError(message)


def _terminated(signum, frame):
    # SIGTERM ends a command as Ctrl-C does, with its own status
    e = KeyboardInterrupt('SIGTERM')
    e.signum = signal.SIGTERM
    raise e


@contextlib.contextmanager
def held_signals():
    """
    Ctrl-C and SIGTERM held back while the block runs, and taken when it ends. A command imports
    torch in such a block: torch's C extension imports numpy and swallows whatever goes wrong
    there, a `KeyboardInterrupt` included, leaving numpy half imported, so that a Ctrl-C in
    those seconds would be lost and the run would fail later, with a traceback.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = []
    before = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    if held:
        # as the command's own handlers would have raised it (130 or 143, below)
        e = KeyboardInterrupt()
        e.signum = held[0]
        raise e


def command(body: Callable[..., Optional[int]]) -> Callable[..., int]:
    """A command line's body, made to return its exit status (the table above) instead of raising."""
    @functools.wraps(body)
    def run(*args, **kwargs) -> int:
        # (signals can be handled only by the main thread)
        main = threading.current_thread() is threading.main_thread()
        before = signal.signal(signal.SIGTERM, _terminated) if main else None
        # One of several processes (torchrun's `RANK`): rank 0 speaks for the run, the others
        # name themselves when they have something of their own to say.
        rank = os.environ.get('RANK', '0')
        who = '' if rank == '0' else f'rank {rank}: '
        try:
            return body(*args, **kwargs) or 0
        except UserError as e:
            print(f'{who}error: {e}', file=sys.stderr)
            return 2
        except LossNotFinite as e:
            print(f'{who}error: {e}; stopped without saving, the last checkpoint is kept', file=sys.stderr)
            return 3
        except BrokenPipeError:
            # the reader of our output is gone (`gpt-train --help | head`): nothing more to say
            sys.stdout = open(os.devnull, 'w')
            return 0
        except KeyboardInterrupt as e:
            # 130 for Ctrl-C, 143 for SIGTERM, as a shell reports a process stopped by the signal
            status = 128 + getattr(e, 'signum', signal.SIGINT)
            if not who:
                print('interrupted' if status == 130 else 'terminated', file=sys.stderr)
            return status
        finally:
            if main:
                signal.signal(signal.SIGTERM, before)
    return run


def argv_of(argv: Optional[List[str]]) -> List[str]:
    """`argv`, or the process's arguments."""
    return sys.argv[1:] if argv is None else list(argv)


def key_values(parser: Parser, argv: List[str]) -> List[str]:
    """nanoGPT's habit: `--batch_size=32` is `batch_size=32`, unless it is one of the parser's own options."""
    flags = {s for a in parser._actions for s in a.option_strings}
    return [a[2:] if a.startswith('--') and '=' in a and a.split('=', 1)[0] not in flags else a for a in argv]
