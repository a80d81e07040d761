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

So `kill -9` at any moment leaves either the whole checkpoint or none of it; a temporary folder
left by a killed writer is removed the next time the run saves. A full disk or a read-only
folder is one `UserError` naming the path, and the older checkpoints stay as they were.

When a checkpoint is written: labml's loop saves at the end of every epoch; `Timer` adds one
every `checkpoint_minutes` of wall clock, and a stopped run saves once more (`save_once`); the
[steps](steps.html) decide when to call them.

This module also decides which checkpoints are *complete* (`problem`, `is_complete`) and holds
the one safe loader of everything a run folder holds (`load_tensors`, `load_yaml`,
`load_json`). Finding runs and choosing their checkpoints is the [run store](runs.html)'s.
"""

import json
import os
import pathlib
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
import yaml

from labml import experiment, tracker

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

    def __init__(self, path: pathlib.Path, skip_step: Optional[int] = None):
        super().__init__(path)
        self.skip_step = skip_step

    def save(self, global_step):
        if not self.model_savers:
            return super().save(global_step)
        checkpoints = Path(self.path)
        final = checkpoints / str(global_step)
        # The step a resumed run starts from is its parent's checkpoint; one already here is done.
        if global_step == self.skip_step or is_complete(final):
            return
        # Only this process writes this run's checkpoints, so any temporary folder here was left
        # by a writer that is gone (killed while writing).
        remove_partial_checkpoints(checkpoints.parent)
        tmp = checkpoints.parent / f'.checkpoint-{global_step}.tmp'
        try:
            checkpoints.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            info = {name: saver.save(tmp) for name, saver in self.model_savers.items()}
            write_durably(tmp / INFO, lambda f: f.write(json.dumps(info).encode('utf-8')))
            _fsync_dir(tmp)
            os.rename(tmp, final)
            _fsync_dir(checkpoints)
        except OSError as e:
            # A full disk or a read-only folder: nothing half written stays, older checkpoints are untouched.
            shutil.rmtree(tmp, ignore_errors=True)
            where = e.filename or tmp
            kept = steps_complete(checkpoints)
            raise UserError(f'cannot write checkpoint {global_step} ({where}: {e.strerror or e}); '
                            f'the last complete checkpoint is ' + (str(kept[-1]) if kept else 'none')) from None

    def load(self, checkpoint_path: pathlib.Path, models: List[str] = None):
        why = problem(Path(checkpoint_path))
        if why is not None:
            raise UserError(f'checkpoint {checkpoint_path} is not complete: {why}')
        info = load_json(Path(checkpoint_path) / INFO)
        for name in models or self.model_savers:
            self.model_savers[name].load(checkpoint_path, info[name])


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
        path = Path(checkpoint_path) / info
        try:
            state = load_tensors(path)
        except UserError as e:
            raise UserError(f'{e}; {newest_complete(path.parent.parent, below=int(path.parent.name))}') from None
        try:
            self.set(state)
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            # A state of another shape: the model's shape and such cannot change on resume.
            raise UserError(f'{path} does not fit this run ({_detail(e)}); '
                            f'the model shape cannot change when resuming') from None


def model_saver(name: str, model: torch.nn.Module) -> TorchStateSaver:
    """The model's `state_dict` as `<name>.pth`, as labml's `add_pytorch_models` would save it."""
    return TorchStateSaver(name, model.state_dict, model.load_state_dict)


def install(savers: Dict[str, ModelSaver], *, resumed_step: Optional[int] = None):
    """
    Make the current labml experiment save atomically, with these savers. A resumed run passes
    `resumed_step`, the parent's checkpoint it starts from: labml's loop would save it again
    at its first iteration, a duplicate of a checkpoint the parent holds.
    """
    labml_glue.set_checkpoint_saver(AtomicCheckpointSaver(labml_glue.checkpoint_path(), skip_step=resumed_step))
    experiment.add_model_savers(savers)


class Timer:
    """Whether `minutes` of wall clock have passed since the last checkpoint (0: never due)."""

    def __init__(self, minutes: float):
        self.seconds = minutes * 60
        self.restart()

    def restart(self):
        """A checkpoint was just saved."""
        self.last = time.monotonic()

    def due(self) -> bool:
        return 0 < self.seconds <= time.monotonic() - self.last


def save_once():
    """Save a checkpoint at the current global step unless one is already there."""
    if not (labml_glue.checkpoint_path() / str(tracker.get_global_step())).exists():
        experiment.save_checkpoint()


def remove_partial_checkpoints(run_dir: Path):
    """Remove the `.checkpoint-<step>.tmp` folders of a run whose writer is gone."""
    for partial in Path(run_dir).glob('.checkpoint-*.tmp'):
        shutil.rmtree(partial, ignore_errors=True)


# ## Temporary files of other writers
#
# A cache file is written as `<name>.<pid>@<host>.tmp` and renamed when complete. The name
# says who writes it, so that one left by a killed process can be told from one that another
# process is writing right now: it is removed once that process is gone from this machine.

def temporary(path: Path) -> Path:
    """Where this process writes `path` before renaming it into place."""
    return path.with_name(f'{path.name}.{os.getpid()}@{socket.gethostname()}.tmp')


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_leftovers(folder: Path):
    """Remove the temporary files in `folder` whose writers were on this machine and are gone."""
    for tmp in Path(folder).glob('*.tmp'):
        writer = re.search(r'\.(\d+)@(.+)\.tmp$', tmp.name)
        if writer and writer.group(2) == socket.gethostname() and not process_alive(int(writer.group(1))):
            tmp.unlink(missing_ok=True)


# ## Loading, always safely
#
# Whatever a run folder holds was written by someone; reading it must never run code. So
# tensors are read with `weights_only=True` (given explicitly, which torch honours whatever
# `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD` says), YAML with `safe_load` (no Python tags), JSON as
# JSON. A file that is missing or damaged is a `UserError` that names it.

def _detail(e: Exception) -> str:
    return f"{e.__class__.__name__}: {' '.join(str(e).split())[:200]}"


def _read(path: Path, parse: Callable[[Path], Any], what: str) -> Any:
    path = Path(path)
    try:
        return parse(path)
    except FileNotFoundError:
        raise UserError(f'{path} is missing') from None
    except (IsADirectoryError, PermissionError) as e:
        raise UserError(f'{path} cannot be read ({e.strerror})') from None
    except Exception as e:  # whatever the parser makes of a damaged file
        raise UserError(f'{path} is not {what} ({_detail(e)})') from None


def load_tensors(path: Path) -> Any:
    """A `.pth` file of tensors and plain values; never unpickles code."""
    return _read(path, lambda p: torch.load(p, map_location='cpu', weights_only=True), 'a loadable checkpoint file')


def load_yaml(path: Path) -> Any:
    """A YAML file, without Python tags."""
    return _read(path, lambda p: yaml.safe_load(p.read_text(encoding='utf-8')), 'valid YAML')


def load_json(path: Path) -> Any:
    return _read(path, lambda p: json.loads(p.read_text(encoding='utf-8')), 'valid JSON')


# ## Complete checkpoints
#
# A checkpoint folder is complete when its `info.json` is a non-empty index that names the
# model, every name is a plain file name inside the folder (not an absolute path, not `..`),
# and every file is there. Whether the files *load* is found when they are loaded
# (`load_tensors`); the run store then names the newest other complete checkpoint.

def problem(path: Path) -> Optional[str]:
    """Why the checkpoint folder `path` is not complete, or `None` when it is."""
    try:
        info = load_json(Path(path) / INFO)
    except UserError:
        return f'{INFO} is missing or damaged'
    if not isinstance(info, dict) or not info:
        return f'{INFO} names no files'
    if 'model' not in info:
        return f'{INFO} names no model'
    for file in info.values():
        if not isinstance(file, str) or not is_plain_name(file):
            return f'{INFO} names a file outside the checkpoint: {file!r}'
        if not (Path(path) / file).is_file():
            return f'{file} is missing'
    return None


def is_complete(path: Path) -> bool:
    return problem(path) is None


def is_plain_name(name: str) -> bool:
    """A single file or folder name: no separator, not `.` or `..`, nothing hidden."""
    return bool(name) and name == Path(name).name and not name.startswith('.') and '\\' not in name


def steps_complete(checkpoints_dir: Path) -> List[int]:
    """The steps of the complete checkpoints under `checkpoints/`, oldest first."""
    return [s for s in steps(checkpoints_dir) if is_complete(Path(checkpoints_dir) / str(s))]


def newest_complete(checkpoints_dir: Path, below: Optional[int] = None) -> str:
    """Names the newest complete checkpoint (before step `below`), for an error message."""
    complete = [s for s in steps_complete(checkpoints_dir) if below is None or s < below]
    return f'the newest complete checkpoint is {complete[-1]} (--checkpoint {complete[-1]})' if complete \
        else 'there is no complete checkpoint before it'


def steps(checkpoints_dir: Path) -> List[int]:
    """Every step folder under `checkpoints/`, complete or not, oldest first."""
    root = Path(checkpoints_dir)
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and p.is_dir()) if root.is_dir() else []
