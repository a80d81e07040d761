"""
# Stops that never lose work

A run is asked to stop by Ctrl-C (SIGINT) or by SIGTERM, which `docker stop`, SLURM, systemd,
`timeout` and torchrun send. Either request is taken at step granularity: the step in progress
finishes, its loss is reported, a checkpoint is saved (unless `is_save_models=false`) and the
run ends with `KeyboardInterrupt`, which the command line turns into exit status 130 (SIGINT)
or 143 (SIGTERM). A second Ctrl-C stops at once; SIGTERM never does, since torchrun forwards
one to its workers right after a terminal's Ctrl-C has reached them.

`StopRequests` is a context manager: it installs the handlers and, on the way out, restores
the ones it replaced, so that nothing of a finished run (labml's loop handler included) stays
behind in a notebook or in the dashboard wait that follows.
"""

import signal
import threading
from typing import Optional

from labml import logger
from labml.logger import Text

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """Raised after the step in progress when a stop was requested; carries the signal."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StopRequests:
    """
    `with StopRequests() as stop:` ... `stop.signum` is the first signal received (or `None`).
    Outside the main thread (where Python cannot handle signals) it does nothing.
    """

    def __init__(self):
        self.signum: Optional[int] = None
        self._replaced = {}

    def __enter__(self) -> 'StopRequests':
        if threading.current_thread() is threading.main_thread():
            self._replaced = {s: signal.getsignal(s) for s in SIGNALS}
            self.install()
        return self

    def install(self):
        """(Re)install our handlers, e.g. after labml's loop has put its own SIGINT handler in."""
        for s in self._replaced:
            signal.signal(s, self._on_signal)

    def __exit__(self, *exc):
        for s, handler in self._replaced.items():
            signal.signal(s, handler)
        return False

    def _on_signal(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            # A second Ctrl-C: stop now, without a checkpoint.
            raise KeyboardInterrupt()
        if self.signum is None:
            self.signum = signum
            name = 'Ctrl-C' if signum == signal.SIGINT else signal.Signals(signum).name
            logger.log(f'\n{name}: stopping after this step' +
                       (' (press again to stop now).' if signum == signal.SIGINT else '.'), Text.danger)


def interrupted(signum: int) -> KeyboardInterrupt:
    """The `KeyboardInterrupt` a stopped run ends with (labml records the run as interrupted); it names the signal."""
    e = KeyboardInterrupt(signal.Signals(signum).name)
    e.signum = signum
    return e


def exit_status(e: KeyboardInterrupt) -> int:
    """128 + the signal number, as a shell reports a process stopped by it: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + getattr(e, 'signum', signal.SIGINT)
