"""
# Console output people can read

labml prints everything through one console destination, made for a terminal: each update of
the live status line starts with `\\r`, a hundred spaces and `\\r` again, and every part is
wrapped in ANSI colour codes. Piped into a file that is unreadable, and in a terminal narrower
than the status line the line wraps and every update leaves a new line behind. This module
replaces that destination with one that knows where it writes:

* **not a terminal** (a pipe, a file, CI, `nohup`): plain lines, with no colour codes and no
  `\\r`. The live status line is not printed as it changes; each *report* (a `tracker.save()`
  inside [`report_line`](#report_line)) prints it once, as one line: step, sections, losses,
  accuracy, learning rate, gradient norm, tokens per second;
* **a terminal**: labml's live status line, cut to the terminal's width and cleared with
  `ESC[2K` instead of padding, so it never wraps;
* **`NO_COLOR`** set (https://no-color.org): no colour codes in either case.

labml's `Prepare <config>` sections (one per computed config, about 75 lines before the first
step) are hidden unless `verbose`.
"""

import contextlib
import os
import re
import shutil
import sys
from typing import List, Optional, Tuple

from .labml_glue import ConsoleDestination, Destination, logger_destinations

# Erase the terminal's current line (the status line labml rewrites)
CLEAR_LINE = '\r\x1b[2K'
ANSI_RESET = '\x1b[0m'
# What labml's configs print while computing a config: `Prepare <name>`
_PREPARE = re.compile(r'\s*Prepare \S+$')


def colors_wanted() -> bool:
    """Colours only on a terminal, and never when `NO_COLOR` is set to anything."""
    return sys.stdout.isatty() and not os.environ.get('NO_COLOR')


class Console(Destination):
    """labml's console destination, for a terminal (`live=True`) or a file or pipe (`live=False`)."""

    def __init__(self, *, live: bool, color: bool, verbose: bool):
        self.live, self.color, self.verbose = live, color, verbose
        # Not live: the status line as it stands, printed only when a report commits it
        self.pending = ''
        # Whether the next status line is a report's, to print as a line of its own
        self.committing = False
        # Whether the last thing logged was a hidden `Prepare` line
        self.hid = False

    def log(self, parts, *, is_new_line: bool, is_reset: bool):
        parts = [(p, None) if isinstance(p, str) else p for p in parts]
        text = ''.join(t for t, _ in parts)
        if not self.verbose and parts and _PREPARE.match(parts[0][0]):
            self.hid = True
            return
        # labml ends a parent section's line with an empty one before its first child's
        if self.hid and not text:
            self.hid = False
            return
        self.hid = False
        if self.live:
            self._terminal(parts, is_new_line=is_new_line, is_reset=is_reset)
        else:
            self._plain(text, is_new_line=is_new_line, is_reset=is_reset)

    def _terminal(self, parts: List[Tuple[str, Optional[object]]], *, is_new_line: bool, is_reset: bool):
        if not is_new_line and not any('\n' in t for t, _ in parts):
            # A status line: cut to the terminal's width, so that it never wraps
            parts = _crop(parts, shutil.get_terminal_size().columns - 1)
        text = ''.join(self._paint(t, style) for t, style in parts)
        sys.stdout.write((CLEAR_LINE if is_reset else '') + text + ('\n' if is_new_line else ''))
        sys.stdout.flush()

    def _paint(self, text: str, style) -> str:
        if not self.color or style is None or not text:
            return text
        styles = style if isinstance(style, list) else [style]
        return ''.join(s.ansi() for s in styles) + text + ANSI_RESET

    def _plain(self, text: str, *, is_new_line: bool, is_reset: bool):
        # A reset starts the line over: what was pending was a status line that nobody committed.
        had_status = bool(self.pending)
        if is_reset:
            self.pending = ''
        self.pending += text
        if is_new_line:
            # An empty new line after a status line only ended it in a terminal.
            if self.pending or not (is_reset and had_status):
                self._write(self.pending)
            self.pending = ''
        elif self.committing:
            self._write(self.pending)
            self.pending = ''
        elif '\n' in self.pending:
            # A finished section, whose line labml ends with a '\n' of its own
            done, self.pending = self.pending.rsplit('\n', 1)
            self._write(done)

    @staticmethod
    def _write(line: str):
        sys.stdout.write(line.replace('\t', '  ').rstrip() + '\n')
        sys.stdout.flush()


def _crop(parts, width: int):
    """The parts' text cut to `width` characters, tabs as two spaces."""
    out = []
    for text, style in parts:
        text = text.replace('\t', '  ')[:max(width, 0)]
        width -= len(text)
        out.append((text, style))
    return out


def install(verbose: bool = False) -> Console:
    """
    Put a `Console` in place of labml's terminal destination (a notebook's destinations are left
    alone). Call again to change `verbose`.
    """
    destinations = logger_destinations()
    console = Console(live=sys.stdout.isatty(), color=colors_wanted(), verbose=verbose)
    for i, d in enumerate(destinations):
        if isinstance(d, Console) or (isinstance(d, ConsoleDestination) and d.is_screen):
            destinations[i] = console
    return console


@contextlib.contextmanager
def report_line():
    """Print the status line that a `tracker.save()` inside makes as one line (when not live)."""
    consoles = [d for d in logger_destinations() if isinstance(d, Console)]
    for c in consoles:
        c.committing = True
    try:
        yield
    finally:
        for c in consoles:
            c.committing = False


def progress(label: str, done: int, total: int):
    """A progress bar on stderr, redrawn in place, when stderr is a terminal (and nothing otherwise)."""
    if not sys.stderr.isatty():
        return
    width = 30
    filled = width * done // max(total, 1)
    sys.stderr.write(f'{CLEAR_LINE}{label} [{"#" * filled}{"." * (width - filled)}] {done:,}/{total:,}'
                     + ('\n' if done >= total else ''))
    sys.stderr.flush()
