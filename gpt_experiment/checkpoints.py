"""
# Checkpoints that survive a crash

labml writes a checkpoint as `checkpoints/<step>/`: it makes the folder, lets each registered
`ModelSaver` write its file into it, and writes `info.json` (the index of those files) last.
A process killed half way leaves a folder with a truncated file, or no `info.json`, under a
name that labml's loader would happily pick as the newest.

Here a checkpoint is written the way databases write files:

1. every file goes into a temporary folder *beside* `checkpoints/` (`.checkpoint-<step>.tmp`),
   so that nothing that lists `checkpoints/` (labml's loader included) ever sees it;
2. each file is flushed to disk (`fsync`), `info.json` last;
3. the folder is renamed to `checkpoints/<step>`, which is atomic on one file system, and the
   parent folder is synced so that the rename itself survives a power cut.

So `kill -9` at any moment leaves either the whole checkpoint or none of it.
`find_checkpoint(run_dir)` returns the newest *complete* checkpoint (its `info.json` parses and
names files that are all there), for `--resume` and for anything else that loads one; older
partial folders written by labml's own saver are skipped the same way.

Files are read back with `torch.load(..., weights_only=True)`: a checkpoint holds tensors and
plain Python values only, never pickled code.
"""

import json
import os
import pathlib
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from labml import experiment

from .errors import UserError
from . import labml_glue
from .labml_glue import CheckpointSaver, ModelSaver

INFO = 'info.json'


def _fsync_dir(path: Path):
    """Make a rename or a new entry in `path` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, write: Callable[[Any], None]):
    """Open `path` for binary writing, let `write(f)` fill it, and flush it to disk."""
    with open(path, 'wb') as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


class AtomicCheckpointSaver(CheckpointSaver):
    """labml's `CheckpointSaver`, writing into a temporary folder that is renamed when complete."""

    def save(self, global_step):
        if not self.model_savers:
            return super().save(global_step)
        checkpoints = Path(self.path)
        final = checkpoints / str(global_step)
        # A resumed run passes again through the step it was loaded at: that checkpoint is there.
        if is_complete(final):
            return
        checkpoints.mkdir(parents=True, exist_ok=True)
        tmp = checkpoints.parent / f'.checkpoint-{global_step}.tmp'
        if tmp.exists():
            shutil.rmtree(tmp)  # left by a process killed while writing it
        tmp.mkdir()

        info = {name: saver.save(tmp) for name, saver in self.model_savers.items()}
        write_durably(tmp / INFO, lambda f: f.write(json.dumps(info).encode('utf-8')))
        _fsync_dir(tmp)
        os.rename(tmp, final)
        _fsync_dir(checkpoints)

    def load(self, checkpoint_path: pathlib.Path, models: List[str] = None):
        if not is_complete(Path(checkpoint_path)):
            raise UserError(f'checkpoint {checkpoint_path} is incomplete')
        try:
            super().load(checkpoint_path, models)
        except Exception as e:  # a truncated or foreign file: torch's unpickler says why
            detail = ' '.join(str(e).split())[:200]
            raise UserError(f'checkpoint {checkpoint_path} cannot be loaded ({e.__class__.__name__}: {detail})') from None


class TorchStateSaver(ModelSaver):
    """
    A labml `ModelSaver` for anything with a state: `get()` returns tensors and plain values,
    saved as `<name>.pth`; `set(state)` takes them back.
    """

    def __init__(self, name: str, get: Callable[[], Any], set: Callable[[Any], None]):
        self.name = name
        self.get = get
        self.set = set

    def save(self, checkpoint_path: pathlib.Path) -> str:
        file_name = f'{self.name}.pth'
        state = self.get()
        write_durably(Path(checkpoint_path) / file_name, lambda f: torch.save(state, f))
        return file_name

    def load(self, checkpoint_path: pathlib.Path, info: Any):
        self.set(torch.load(Path(checkpoint_path) / info, map_location='cpu', weights_only=True))


def model_saver(name: str, model: torch.nn.Module) -> TorchStateSaver:
    """The model's `state_dict` as `<name>.pth`, as labml's `add_pytorch_models` would save it."""
    return TorchStateSaver(name, model.state_dict, model.load_state_dict)


def install(savers: Dict[str, ModelSaver]):
    """Make the current labml experiment save atomically, with these savers."""
    labml_glue.set_checkpoint_saver(AtomicCheckpointSaver(labml_glue.checkpoint_path()))
    experiment.add_model_savers(savers)


def is_complete(path: Path) -> bool:
    """A checkpoint folder whose `info.json` parses and whose files are all there."""
    try:
        info = json.loads((path / INFO).read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return False
    if not isinstance(info, dict):
        return False
    files = [f for f in info.values() if isinstance(f, str)]
    return len(files) == len(info) and all((path / f).is_file() for f in files)


def checkpoint_steps(run_dir: Path) -> List[int]:
    """The steps of the complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / 'checkpoints'
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and is_complete(p))


def find_checkpoint(run_dir: Path, step: Optional[int] = None) -> Path:
    """
    The newest complete checkpoint of `run_dir` (a `logs/<name>/<uuid>` folder), or the one at
    `step`. Incomplete ones are never returned; asking for one is a `UserError`.
    """
    steps = checkpoint_steps(run_dir)
    if not steps:
        raise UserError(f'run {Path(run_dir).name} has no complete checkpoint')
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise UserError(f'run {Path(run_dir).name} has no complete checkpoint at step {step}; '
                        f'it has: {", ".join(map(str, steps))}')
    return Path(run_dir) / 'checkpoints' / str(step)


def find_run(experiments_path: Path, run_uuid: str) -> Path:
    """
    The folder of a run: `<experiments>/<name>/<uuid>`, or `<uuid>.0` (rank 0) for a run
    trained with several processes.
    """
    if not run_uuid or any(c in run_uuid for c in '/\\') or run_uuid.startswith('.'):
        raise UserError(f'not a run uuid: {run_uuid!r}')
    root = Path(experiments_path)
    if root.is_dir():
        for exp in sorted(p for p in root.iterdir() if p.is_dir()):
            for name in (run_uuid, f'{run_uuid}.0'):
                if (exp / name / 'run.yaml').is_file():
                    return exp / name
    raise UserError(f'no run {run_uuid} under {root}')
