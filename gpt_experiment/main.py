"""
# `gpt-train`: the command line of training

```
gpt-train [PRESET.yaml ...] [key=value ...] [--name NAME] [--writers W,...] [--help]
gpt-train --resume RUN [--checkpoint STEP] [key=value ...]
gpt-train --nproc-per-node N [...]                 (N processes on this machine, as torchrun --standalone)
python -m gpt_experiment.main [...]                (the same as gpt-train)
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
    p.add_argument('--writers', default=','.join(commands.DEFAULT_WRITERS),
                   help='labml writers, comma-separated: screen, sqlite, web_api (the dashboard), '
                             'tensorboard, file (default: %(default)s)')
    p.add_argument('-v', '--verbose', action='store_true', help="show labml's `Prepare <config>` sections")
    p.add_argument('--nproc-per-node', '--nproc_per_node', type=int, default=1, metavar='N',
                   help='train with N processes on this machine (DDP), as torchrun --standalone')
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
    if args.nproc_per_node != 1:
        return launch(args.nproc_per_node, commands.argv_of(argv))
    with commands.held_signals():
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


def launch(workers: int, argv: List[str]) -> int:
    """`workers` processes of this command on this machine, each one rank of the run."""
    if not 1 <= workers <= 512:
        raise UserError(f'--nproc-per-node must be in [1, 512], got {workers}')
    import logging
    import os
    import signal
    import uuid
    with commands.held_signals():
        from torch.distributed.elastic.multiprocessing.api import SignalException
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.launcher.api import LaunchConfig, elastic_launch
    # The launcher's own warnings ("shutting down workers") are not the run's.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith('torch.distributed.elastic'):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=workers, run_id=uuid.uuid4().hex,
                          rdzv_backend='c10d', rdzv_endpoint='localhost:0', max_restarts=0, monitor_interval=0.1)
    # the workers' arguments: these, less `--nproc-per-node N`
    flags, own, skip = ('--nproc-per-node', '--nproc_per_node'), [], False
    for a in argv:
        if not skip and a not in flags and not a.startswith(tuple(f + '=' for f in flags)):
            own.append(a)
        skip = a in flags
    os.environ.setdefault('OMP_NUM_THREADS', str(max(1, (os.cpu_count() or 1) // workers)))
    try:
        elastic_launch(config, sys.executable)('-m', 'gpt_experiment.main', *own)
    except SignalException as e:
        # the workers have stopped, saved and said so: their status is the run's
        raise SystemExit(128 + int(e.sigval)) from None
    except ChildFailedError as e:
        codes = {rank: f.exitcode for rank, f in e.failures.items()}
        # A worker killed by another signal than the launcher's own stop (SIGTERM) died.
        died = {rank: c for rank, c in codes.items() if c < 0 and -c not in (signal.SIGTERM, signal.SIGINT)}
        if not died and codes.get(0, 0) > 0:
            # rank 0 ended on its own and said why, in one line: its status is the run's
            raise SystemExit(codes[0]) from None
        if died:
            rank, code = min(died.items())
            how = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else -code
            saving = ', rank 0 saving a checkpoint' if 0 not in died else ''
            raise UserError(f'rank {rank} died ({how}); the others stopped{saving}') from None
        said = [c for c in codes.values() if c > 0]
        raise SystemExit(said[0] if said else 1) from None
    return 0


if __name__ == '__main__':
    sys.exit(run())
