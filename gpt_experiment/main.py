"""
# Command line

```
python -m gpt_experiment.main [PRESET.yaml ...] [key=value ...] [--name NAME] [--writers W,...] [--help]
python -m gpt_experiment.main --resume RUN_UUID [--checkpoint STEP] [key=value ...]
torchrun --nproc_per_node=N -m gpt_experiment.main [...]
```

Presets under `configs/` and `key=value` arguments become one dictionary of overrides for
[`train`](training.html), later ones winning. `--help` lists every config key.
Bad input, a damaged run or a file that cannot be written is one line on stderr and exit
status 2; a loss that is not finite stops the run with exit status 3; Ctrl-C or SIGTERM
finishes the step, saves a checkpoint and exits 130 or 143 ([stops](stops.html)); every
command maps these the same way ([commands](commands.html)).
"""

import argparse
import sqlite3
import sys
from typing import List, Optional

from . import commands, distributed, overrides, writers
from .configs import EFFECTIVE_DEFAULTS, Configs
from .errors import UserError
from .training import train


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = commands.Parser(prog='python -m gpt_experiment.main', add_help=False,
                             description='Train a GPT as a labml experiment.')
    parser.add_argument('items', nargs='*', metavar='PRESET.yaml | key=value',
                        help='YAML override files and key=value overrides; later ones win')
    parser.add_argument('--name', default=None, help='experiment name (the folder under logs/; default gpt)')
    parser.add_argument('--resume', metavar='RUN_UUID', help='continue this run from its newest complete checkpoint')
    parser.add_argument('--checkpoint', metavar='STEP', type=int, help='with --resume: the checkpoint step to start from')
    parser.add_argument('--comment', default='', help='a note stored with the run')
    parser.add_argument('--writers', default=','.join(writers.DEFAULT),
                        help='labml writers, comma-separated: screen, sqlite, web_api (the dashboard), '
                             'tensorboard, file (default: %(default)s)')
    parser.add_argument('-v', '--verbose', action='store_true', help="show labml's `Prepare <config>` sections")
    parser.add_argument('-h', '--help', action='store_true', help='list every config key and exit')
    args = parser.parse_args(argv)
    if args.help:
        print(parser.format_help())
        # what a run with these presets and key=value arguments would use
        given = overrides.check_overrides(Configs, overrides.overrides_from_args(args.items))
        print('config keys (type, value a run would use, registered options):')
        print(overrides.describe(Configs, given, EFFECTIVE_DEFAULTS))
        sys.exit(0)
    return args


@commands.command
def run(argv: Optional[List[str]] = None) -> int:
    """The command line (`gpt-train`; `argv` defaults to `sys.argv[1:]`): one line and a non-zero
    status on bad input, 130 on Ctrl-C, 143 on SIGTERM."""
    try:
        args = parse_args(argv)
        train(overrides.overrides_from_args(args.items), name=args.name, comment=args.comment,
              resume=args.resume, checkpoint=args.checkpoint, writers=args.writers,
              verbose=args.verbose)
    except OSError as e:
        # labml's own files (run.yaml, configs.yaml, the logs) on a full disk or a read-only folder
        raise UserError(f'cannot write {e.filename or "the run"}: {e.strerror or e}') from None
    except sqlite3.OperationalError as e:
        # labml's `sqlite.db` of tracked values, likewise ("database or disk is full")
        raise UserError(f'cannot write the run\'s sqlite.db: {e}') from None
    finally:
        distributed.teardown()
    return 0


if __name__ == '__main__':
    sys.exit(run(sys.argv[1:]))
