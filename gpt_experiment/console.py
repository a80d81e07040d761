r"""
# What a run shows as it trains

Two things print while a run trains: what labml logs (the experiment's header, the corpus being
tokenised, the greedy samples, the end-of-run summary), and the training's own progress, which
the [trainer](trainer.html) hands to a `Display` at each report and each validation.

**The display.** In a terminal, one status line over the whole run, redrawn in place and cut to
the terminal's width, the losses first:

```
loss 1.6022  valid 1.7210 │ epoch 2/3  63%|█████████▌     | 0:25 left │ 61,204 tok/s  lr 3.1e-03
```

It is a [tqdm](https://tqdm.github.io/) bar over the tokens of the whole run (its rate and time
left come from tqdm), with the run's numbers around it; when the terminal is too narrow the
rates go first, then the epoch. After each validation a line stays above it in the scrollback
(nothing is erased): the step, the epoch, both losses and accuracies, the rates and the time so
far. Piped into a file (or under CI, `nohup`), there is no status line: each report is one plain
line, and each validation another, with no colour codes and no carriage returns.

**labml's lines.** labml prints through one console destination, made for a terminal: each
update starts with `\r`, a hundred spaces and `\r` again, and every part is wrapped in ANSI
colour codes. `Console` replaces it: plain lines when not a terminal, colours only on a
terminal and never with `NO_COLOR` set (https://no-color.org), lines written above the status
line while there is one, and labml's `Prepare <config>` sections (one per computed config,
about 75 lines before the first step) hidden unless `verbose`.
"""

import os
import re
import shutil
import sys
import time
from typing import Dict, List, Optional, Tuple

from .labml_glue import ConsoleDestination, Destination, logger_destinations

# Erase the terminal's current line (what labml's own progress lines rewrite)
CLEAR_LINE = '\r\x1b[2K'
ANSI_RESET = '\x1b[0m'
# What labml's configs print while computing a config: `Prepare <name>`
_PREPARE = re.compile(r'\s*Prepare \S+$')
# The narrowest bar the status line keeps
MIN_BAR = 10


def colors_wanted() -> bool:
    """Colours only on a terminal, and never when `NO_COLOR` is set to anything."""
    return sys.stdout.isatty() and not os.environ.get('NO_COLOR')


# ## The display of training

def _literal(text: str) -> str:
    """Text to show as it is in a tqdm format."""
    return text.replace('{', '{{').replace('}', '}}')


def _seconds(s: float) -> str:
    s = int(s)
    return f'{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}' if s >= 3600 else f'{s // 60}:{s % 60:02d}'


class Display:
    """
    The training's progress: a status line over the whole run in a terminal (`live`), one line
    a report otherwise. `total` is the tokens of the whole run, `start` those a resumed run had
    trained already.
    """

    def __init__(self, *, live: bool, total: int, start: int, epochs: int):
        self.epochs = epochs
        # The numbers the status line shows, as the reports bring them
        self.values: Dict[str, float] = {}
        self.epoch = 0
        self.bar = None
        if live:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=start, file=sys.stdout, dynamic_ncols=True, leave=True,
                            bar_format='{desc}', smoothing=0.1, mininterval=0.2)
        self.started = time.monotonic()

    def report(self, tokens: int, epoch: int, values: Dict[str, float]):
        """A training report: the status line moves (in a terminal), or one line is printed."""
        self.values.update(values)
        self.epoch = epoch
        if self.bar is None:
            self._line(tokens, values)
            return
        # the new numbers into the line's format first, so that tqdm's own redraw shows them
        self._format()
        if not self.bar.update(tokens - self.bar.n):
            self.bar.refresh()

    def validation(self, tokens: int, epoch: int, values: Dict[str, float]):
        """A validation: a line that stays, above the status line: the losses, the rates and the time so far."""
        self.values.update(values)
        self._line(tokens, {k: v for k, v in self.values.items() if k in ('loss.train', 'loss.valid', 'lr',
                                                                          'tokens_per_second')}, elapsed=True)

    def write(self, line: str):
        """A line of its own (labml's, a sample), above the status line while there is one."""
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            sys.stdout.write(line + '\n')
            sys.stdout.flush()

    def close(self):
        if self.bar is not None:
            self._redraw()
            self.bar.close()
            self.bar = None

    def _numbers(self) -> Tuple[str, str]:
        """The losses, and the rates, as the status line shows them."""
        v = self.values
        losses = '  '.join(f'{name} {v[key]:.4f}' for name, key in (('loss', 'loss.train'), ('valid', 'loss.valid'))
                           if key in v)
        rates = '  '.join(text for key, text in (('tokens_per_second', f'{v.get("tokens_per_second", 0):,.0f} tok/s'),
                                                 ('lr', f'lr {v.get("lr", 0):.1e}')) if key in v)
        return losses, rates

    def _redraw(self):
        self._format()
        self.bar.refresh()

    def _format(self):
        """The status line's format, cut to the terminal's width: the rates go first, then the epoch."""
        losses, rates = self._numbers()
        width = shutil.get_terminal_size().columns - 1
        epoch = f'epoch {min(self.epoch + 1, self.epochs)}/{self.epochs}  '
        for shown_epoch, shown_rates in ((epoch, rates), (epoch, ''), ('', '')):
            head = (f'{losses} │ ' if losses else '') + shown_epoch
            tail = f' │ {shown_rates}' if shown_rates else ''
            # tqdm's own parts: the percentage, the bar's edges and the time left
            if len(head) + len(' 100%||') + len(' 0:00:00 left') + len(tail) + MIN_BAR <= width:
                break
        self.bar.ncols = width
        self.bar.bar_format = _literal(head) + '{percentage:3.0f}%|{bar}| {remaining} left' + _literal(tail)

    def _line(self, tokens: int, values: Dict[str, float], elapsed: bool = False):
        """One plain line: the step, the epoch, the losses first, then the rest."""
        names = [('loss.train', 'loss', '.5f'), ('loss.valid', 'valid', '.5f'), ('accuracy.train', 'acc', '.4f'),
                 ('accuracy.valid', 'valid acc', '.4f'), ('grad_norm', 'grad_norm', '.4f'),
                 ('tokens_per_second', 'tok/s', ',.0f'), ('lr', 'lr', '.2e')]
        text = f'{tokens:>12,}  epoch {min(self.epoch + 1, self.epochs)}/{self.epochs}  ' + '  '.join(
            f'{label} {values[key]:{form}}' for key, label, form in names if key in values)
        if elapsed:
            text += f'  {_seconds(time.monotonic() - self.started)} elapsed'
        self.write(text)


# ## labml's console lines

# The display of the training in progress, when there is one: labml's lines go above it.
_display: Optional[Display] = None


class Console(Destination):
    """labml's console destination, for a terminal (`live=True`) or a file or pipe (`live=False`)."""

    def __init__(self, *, live: bool, color: bool, verbose: bool):
        self.live, self.color, self.verbose = live, color, verbose
        # Not live: the line as it stands, printed when it ends
        self.pending = ''
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
        if _display is not None and _display.bar is not None:
            # Above the training's status line, as a line of its own
            if is_new_line:
                _display.write(''.join(self._paint(t, style) for t, style in parts).replace('\t', '  '))
            return
        if not is_new_line and not any('\n' in t for t, _ in parts):
            # A progress line: cut to the terminal's width, so that it never wraps
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
        # A reset starts the line over: what was pending was a progress line that no one ended.
        if is_reset:
            self.pending = ''
        self.pending += text
        if is_new_line:
            if self.pending:
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


def show(display: Optional[Display]):
    """Make `display` the one labml's lines go above (`None`: none)."""
    global _display
    _display = display


def progress(label: str, done: int, total: int):
    """A progress bar on stderr, redrawn in place, when stderr is a terminal (and nothing otherwise)."""
    if not sys.stderr.isatty():
        return
    width = 30
    filled = width * done // max(total, 1)
    sys.stderr.write(f'{CLEAR_LINE}{label} [{"#" * filled}{"." * (width - filled)}] {done:,}/{total:,}'
                     + ('\n' if done >= total else ''))
    sys.stderr.flush()
