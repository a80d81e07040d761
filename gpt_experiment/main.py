"""
# `gpt-train`: the command line of training

```
gpt-train [PRESET.yaml ...] [key=value ...] [--name NAME] [--writers W,...] [--help]
gpt-train --resume RUN [--checkpoint STEP] [key=value ...]
python -m gpt_experiment.main [...]               (the same)
torchrun --nproc_per_node=N -m gpt_experiment.main [...]
```

Presets and `key=value` arguments (nanoGPT's `--key=value` too) become one dictionary of
overrides ([overrides](overrides.html)) for [`train`](training.html), later ones winning.
`--help` lists every config key with the value a run with these presets and values would use,
from the key table, without importing torch. Every way a run ends is one line and an exit
status ([commands](commands.html)).
"""

import sqlite3
import sys
from typing import List, Optional

from . import commands
from .errors import UserError


def parser() -> commands.Parser:
    p = commands.Parser(prog='gpt-train', add_help=False, description='Train a GPT as a labml experiment.')
    p.add_argument('items', nargs='*', metavar='PRESET.yaml | key=value',
                        help='YAML presets and key=value overrides (--key=value too); later ones win')
    p.add_argument('--name', default=None, help='experiment name (the folder under logs/; default gpt)')
    p.add_argument('--resume', metavar='RUN', help='continue this run (a uuid or a unique prefix) '
                                                        'from its newest complete checkpoint')
    p.add_argument('--checkpoint', metavar='STEP', type=int, help='with --resume: the checkpoint step to start from')
    p.add_argument('--comment', default='', help='a note stored with the run')
    p.add_argument('--writers', default='screen,sqlite,web_api',
                        help='labml writers, comma-separated: screen, sqlite, web_api (the dashboard), '
                             'tensorboard, file (default: %(default)s)')
    p.add_argument('-v', '--verbose', action='store_true', help="show labml's `Prepare <config>` sections")
    p.add_argument('-h', '--help', action='store_true', help='list every config key and exit')
    return p


@commands.command
def run(argv: Optional[List[str]] = None) -> int:
    """`gpt-train` and `python -m gpt_experiment.main`."""
    p = parser()
    args = p.parse_args(commands.key_values(p, commands.argv_of(argv)))
    from . import overrides
    if args.help:
        print(p.format_help())
        print('config keys (type, the value a run would use, options):')
        print(overrides.describe(overrides.overrides_from_args(args.items)))
        return 0
    from . import distributed
    from .training import train
    try:
        train(overrides.overrides_from_args(args.items), name=args.name, comment=args.comment,
              resume=args.resume, checkpoint=args.checkpoint, writers=args.writers, verbose=args.verbose)
    except OSError as e:
        # labml's own files (run.yaml, configs.yaml, the logs) on a full disk or a read-only folder
        raise UserError(f'cannot write {e.filename or "the run"}: {e.strerror or e}') from None
    except sqlite3.OperationalError as e:
        # labml's `sqlite.db` of tracked values, likewise ("database or disk is full")
        raise UserError(f"cannot write the run's sqlite.db: {e}") from None
    finally:
        distributed.teardown()
    return 0


if __name__ == '__main__':
    sys.exit(run())
