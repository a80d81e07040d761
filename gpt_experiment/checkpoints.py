"""
# Checkpoints that survive a crash

A checkpoint is the folder `checkpoints/<step>/` of a run, `<step>` being labml's global step
(the tokens trained on). labml writes one when `experiment.save_checkpoint()` is called: it lets
each registered `ModelSaver` write its file into the folder, then writes `info.json`, the
index of those files. Here:

* `model.pth`: the model's weights;
* `training.pth`: what the [trainer](trainer.html) needs besides them (`Trainer.state_dict`).

labml writes into the final folder, so a process killed half way leaves a folder with a
truncated file, or no `info.json`, under a name a loader would happily pick as the newest. Here
a checkpoint is written the way databases write files:

1. every file goes into a temporary folder *beside* `checkpoints/` (`.checkpoint-<step>.tmp`),
   so that nothing that lists `checkpoints/` ever sees it;
2. each file is flushed to disk (`fsync`), `info.json` last;
3. the folder is renamed to `checkpoints/<step>`, which is atomic on one file system, and the
   parent folder is synced so that the rename itself survives a power cut.

So `kill -9` at any moment leaves either the whole checkpoint or none of it; a temporary folder
left by a killed writer is removed the next time the run saves. A full disk or a read-only
folder is one `UserError` naming the path, and the older checkpoints stay as they were.

This module also says what a *complete* checkpoint is (`problem`, `is_complete`), and reads its
files safely (`load_tensors`); finding runs and choosing their checkpoints is the
[run store](runs.html)'s.
"""

import json
import os
import pathlib
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from labml import experiment

from . import files, labml_glue
from .errors import UserError
from .labml_glue import CheckpointSaver, ModelSaver

INFO = 'info.json'
# The key of `info.json` that holds the size of each file (labml's own index names only the files)
SIZES = 'bytes'


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
            # The size of every file, so that a truncated one is seen without reading it
            info[SIZES] = {f: (tmp / f).stat().st_size for f in info.values()}
            files.write_durably(tmp / INFO, lambda f: f.write(json.dumps(info).encode('utf-8')))
            files.fsync_dir(tmp)
            os.rename(tmp, final)
            files.fsync_dir(checkpoints)
        except (OSError, RuntimeError) as e:
            # A full disk or a read-only folder (`torch.save` says so with a `RuntimeError`):
            # nothing half written stays, older checkpoints are untouched.
            shutil.rmtree(tmp, ignore_errors=True)
            kept = steps_complete(checkpoints)
            raise UserError(f'cannot write checkpoint {global_step} ({files.cannot_write(tmp, e)}); '
                            f'the last complete checkpoint is ' + (str(kept[-1]) if kept else 'none')) from None

    def load(self, checkpoint_path: pathlib.Path, models: List[str] = None):
        raise NotImplementedError('checkpoints are read by the run store (runs.py), not by labml')


class StateSaver(ModelSaver):
    """A labml `ModelSaver` for anything with a state: `get()` returns tensors and plain values, saved as `<name>.pth`."""

    def __init__(self, name: str, get: Callable[[], Any]):
        self.name = name
        self.get = get

    def save(self, checkpoint_path: pathlib.Path) -> str:
        file_name = f'{self.name}.pth'
        import torch
        state = self.get()
        files.write_durably(Path(checkpoint_path) / file_name, lambda f: torch.save(state, f))
        return file_name

    def load(self, checkpoint_path: pathlib.Path, info: Any):
        raise NotImplementedError('checkpoints are read by the run store (runs.py), not by labml')


def install(model, training_state: Callable[[], Dict], *, resumed_step: Optional[int] = None):
    """
    Make the current labml experiment save checkpoints atomically: the model's weights and the
    training state. A resumed run passes `resumed_step`, the parent's checkpoint it starts
    from, which it does not save again.
    """
    labml_glue.set_checkpoint_saver(AtomicCheckpointSaver(labml_glue.checkpoint_path(), skip_step=resumed_step))
    experiment.add_model_savers({'model': StateSaver('model', model.state_dict),
                                 'training': StateSaver('training', training_state)})


def remove_partial_checkpoints(run_dir: Path):
    """Remove the `.checkpoint-<step>.tmp` folders of a run whose writer is gone."""
    for partial in Path(run_dir).glob('.checkpoint-*.tmp'):
        shutil.rmtree(partial, ignore_errors=True)


# ## Loading, always safely
#
# Whatever a run folder holds was written by someone; reading it must never run code. So
# tensors are read with `weights_only=True` (given explicitly, which torch honours whatever
# `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD` says), from a regular file ([files](files.html)). A file
# that is missing or damaged is a `UserError` that names it.

def detail(e: Exception) -> str:
    """An exception in a few words, for a one-line message."""
    return f"{e.__class__.__name__}: {' '.join(str(e).split())[:200]}"


def load_tensors(path: Path) -> Any:
    """A `.pth` file of tensors and plain values; never unpickles code."""
    import torch
    path = files.regular_file(path)
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # whatever the unpickler makes of a damaged file
        raise UserError(f'{path} is not a loadable checkpoint file ({detail(e)})') from None


def load_info(path: Path) -> Any:
    """A checkpoint's `info.json`."""
    text = files.read_text(Path(path) / INFO)
    try:
        return json.loads(text)
    except ValueError as e:
        raise UserError(f'{Path(path) / INFO} is not valid JSON ({detail(e)})') from None


# ## Complete checkpoints
#
# A checkpoint folder is complete when its `info.json` is a non-empty index that names the
# model, every name is a plain file name inside the folder (not an absolute path, not `..`,
# not a link), and every file is there with the size the index records. Whether the files
# *load* is found when they are loaded (`load_tensors`); the run store then names the newest
# other complete checkpoint.

def problem(path: Path) -> Optional[str]:
    """Why the checkpoint folder `path` is not complete, or `None` when it is."""
    try:
        info = load_info(path)
    except UserError:
        return f'{INFO} is missing or damaged'
    if not isinstance(info, dict) or not info:
        return f'{INFO} names no files'
    sizes = info.pop(SIZES, None)
    if 'model' not in info:
        return f'{INFO} names no model'
    for file in info.values():
        if not isinstance(file, str) or not files.is_plain_name(file):
            return f'{INFO} names a file outside the checkpoint: {file!r}'
        # a link out of the checkpoint is not its file
        if (Path(path) / file).is_symlink() or not (Path(path) / file).is_file():
            return f'{file} is missing or not a regular file'
        size = (Path(path) / file).stat().st_size
        # (checkpoints written before sizes were recorded have none to compare with)
        expected = sizes.get(file) if isinstance(sizes, dict) else None
        if size == 0 or (expected is not None and expected != size):
            return f'{file} is truncated ({size:,} bytes, not {expected:,})' if isinstance(expected, int) \
                else f'{file} is empty'
    return None


def files_of(path: Path) -> Dict[str, str]:
    """What a complete checkpoint's `info.json` names: `{'model': 'model.pth', ...}`."""
    info = load_info(path)
    info.pop(SIZES, None)
    return info


def is_complete(path: Path) -> bool:
    return problem(path) is None


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
    # Folders named by a step: anything else there (a stray file, `latest`) is not a checkpoint.
    return sorted(int(p.name) for p in root.iterdir() if p.name.isascii() and p.name.isdigit() and p.is_dir()) \
        if root.is_dir() else []
