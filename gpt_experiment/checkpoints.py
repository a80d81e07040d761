"""
# Checkpoints that survive a crash

A checkpoint is the folder `checkpoints/<step>/` of a run, `<step>` being labml's global step
(the tokens trained on). labml writes one when `experiment.save_checkpoint()` is called: it lets
each registered `ModelSaver` write its file into the folder, then writes `info.json`, the
index of those files. Here:

* `model.safetensors`: the model's weights, in safetensors, which loads without unpickling
  anything; only what the model needs (a tied matrix once, no fixed buffer the model
  recomputes);
* `training.pth`: what the [trainer](trainer.html) needs besides them to go on
  (`Trainer.state_dict`). Generating, evaluating and `init_from` need only the weights, so
  deleting it to save disk keeps a checkpoint that generates, but cannot be resumed.

labml writes into the final folder, so a process killed half way leaves a folder with a
truncated file, or no `info.json`, under a name a loader would happily pick as the newest. Here
a checkpoint is written the way databases write files:

1. every file goes into a temporary folder *beside* `checkpoints/` (`.checkpoint-<step>.tmp`),
   so that nothing that lists `checkpoints/` ever sees it;
2. each file is flushed to disk (`fsync`), `info.json` last, with the size of every file;
3. the folder is renamed to `checkpoints/<step>`, which is atomic on one file system, and the
   parent folder is synced so that the rename itself survives a power cut.

So `kill -9` at any moment leaves either the whole checkpoint or none of it; a temporary folder
left by a killed writer is removed the next time the run saves. A full disk or a read-only
folder is one `UserError` naming the path, and the older checkpoints stay as they were.

**Only the newest `keep_checkpoints` are kept** (0: all), and the one with the best validation
loss: once a new checkpoint is complete, the others are removed, each renamed out of
`checkpoints/` first, so that none is ever half there. A checkpoint that a reader holds
(`reading`: a resume or a `generate` in progress, in any process) is not removed.

This module also says what a *complete* checkpoint is (`problem`), and reads its files safely
(`load_tensors`, `load_weights`); finding runs and choosing their checkpoints is the
[run store](runs.html)'s.
"""

import contextlib
import fcntl
import json
import os
import pathlib
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from labml import experiment

from . import files, labml_glue
from .errors import UserError
from .labml_glue import CheckpointSaver, ModelSaver

INFO = 'info.json'
# The keys of `info.json` besides labml's index of files: the size of each file, the
# validation loss at the checkpoint's step, if one was taken there, and the digest of the
# tokenizer the weights were trained with
SIZES, VALID_LOSS, TOKENIZER = 'bytes', 'valid_loss', 'tokenizer'
NOT_FILES = (SIZES, VALID_LOSS, TOKENIZER)
WEIGHTS, TRAINING = 'model', 'training'


class AtomicCheckpointSaver(CheckpointSaver):
    """labml's `CheckpointSaver`, writing into a temporary folder that is renamed when complete, then pruning."""

    def __init__(self, path: pathlib.Path, *, skip_step: Optional[int] = None, keep: int = 0,
                 valid_loss: Callable[[], Optional[float]] = lambda: None, tokenizer: Optional[str] = None):
        super().__init__(path)
        self.skip_step = skip_step
        self.keep = keep
        self.valid_loss = valid_loss
        self.tokenizer = tokenizer

    def save(self, global_step):
        if not self.model_savers:
            return super().save(global_step)
        checkpoints = Path(self.path)
        final = checkpoints / str(global_step)
        # The step a resumed run starts from is its parent's checkpoint; one already here is done.
        if global_step == self.skip_step or problem(final) is None:
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
            info[VALID_LOSS] = self.valid_loss()
            info[TOKENIZER] = self.tokenizer
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
        if self.keep:
            prune(checkpoints, self.keep)

    def load(self, checkpoint_path: pathlib.Path, models: List[str] = None):
        raise NotImplementedError('checkpoints are read by the run store (runs.py), not by labml')


class WeightsSaver(ModelSaver):
    """The model's weights as `model.safetensors` (safetensors keeps a tied matrix once)."""

    def __init__(self, model):
        self.model = model

    def save(self, checkpoint_path: pathlib.Path) -> str:
        from safetensors.torch import save_model
        path = Path(checkpoint_path) / 'model.safetensors'
        save_model(self.model, str(path))
        files.fsync_file(path)
        return path.name

    def load(self, checkpoint_path: pathlib.Path, info: Any):
        raise NotImplementedError('checkpoints are read by the run store (runs.py), not by labml')


class StateSaver(ModelSaver):
    """Anything with a state: `get()` returns tensors and plain values, saved as `<name>.pth`."""

    def __init__(self, name: str, get: Callable[[], Any]):
        self.name = name
        self.get = get

    def save(self, checkpoint_path: pathlib.Path) -> str:
        import torch
        file_name = f'{self.name}.pth'
        state = self.get()
        files.write_durably(Path(checkpoint_path) / file_name, lambda f: torch.save(state, f))
        return file_name

    def load(self, checkpoint_path: pathlib.Path, info: Any):
        raise NotImplementedError('checkpoints are read by the run store (runs.py), not by labml')


def install(model, training_state: Callable[[], Dict], *, resumed_step: Optional[int] = None, keep: int = 0,
            valid_loss: Callable[[], Optional[float]] = lambda: None, tokenizer: Optional[str] = None):
    """
    Make the current labml experiment save checkpoints atomically: the model's weights and the
    training state, keeping the newest `keep` (0: all) and the best by `valid_loss()`, the
    validation loss at the step saved. `tokenizer`, the digest of the run's tokenizer, goes into
    each `info.json`, so that a reader can tell the run's `tokenizer.json` is still the one the
    weights were trained with. A resumed run passes `resumed_step`, the parent's checkpoint it
    starts from, which it does not save again.
    """
    labml_glue.set_checkpoint_saver(AtomicCheckpointSaver(labml_glue.checkpoint_path(), skip_step=resumed_step,
                                                          keep=keep, valid_loss=valid_loss, tokenizer=tokenizer))
    experiment.add_model_savers({WEIGHTS: WeightsSaver(model), TRAINING: StateSaver(TRAINING, training_state)})


def remove_partial_checkpoints(run_dir: Path):
    """Remove the `.checkpoint-<step>.tmp` folders of a run whose writer is gone, and what a pruning left."""
    for partial in [*Path(run_dir).glob('.checkpoint-*.tmp'), *Path(run_dir).glob('.removed-*')]:
        shutil.rmtree(partial, ignore_errors=True)


# ## Keeping the newest few
#
# A reader holds a shared lock on the checkpoint's folder while it reads (`reading`); pruning
# takes the exclusive lock without waiting, and passes over a folder it cannot get. `flock`
# locks are the kernel's, so a reader killed mid-read holds nothing.

@contextlib.contextmanager
def reading(checkpoint: Path) -> Iterator[None]:
    """Hold `checkpoint` against pruning while it is read."""
    fd = os.open(str(checkpoint), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def prune(checkpoints_dir: Path, keep: int):
    """Remove the complete checkpoints but the newest `keep` and the one with the best validation loss."""
    complete = steps_complete(checkpoints_dir)
    losses = {s: load_info(checkpoints_dir / str(s)).get(VALID_LOSS) for s in complete}
    scored = [s for s in complete if isinstance(losses[s], (int, float))]
    kept = set(complete[-keep:]) | ({min(scored, key=lambda s: losses[s])} if scored else set())
    for step in complete:
        if step in kept:
            continue
        folder = checkpoints_dir / str(step)
        fd = os.open(str(folder), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # being read: it goes at a later save
            os.close(fd)
            continue
        try:
            # out of `checkpoints/` in one rename, then removed at leisure
            gone = checkpoints_dir.parent / f'.removed-{step}'
            os.rename(folder, gone)
        finally:
            os.close(fd)
        shutil.rmtree(gone, ignore_errors=True)


# ## Loading, always safely
#
# Whatever a run folder holds was written by someone; reading it must never run code. So the
# weights are safetensors, and the training state is read with `weights_only=True` (given
# explicitly, which torch honours whatever `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD` says), each from a
# regular file ([files](files.html)). A file that is missing or damaged is a `UserError` that
# names it.

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


def load_weights(model, path: Path):
    """
    The weights at `path` into `model`: `model.safetensors`, or the `model.pth` of a checkpoint
    saved before safetensors (its fixed positional table, which the model now recomputes, is
    passed over). A damaged file, or weights of another shape, is a `UserError`.
    """
    path = files.regular_file(path)
    if path.suffix == '.safetensors':
        from safetensors.torch import load_model
        try:
            load_model(model, str(path), strict=True)
        except (RuntimeError, ValueError, OSError, KeyError) as e:  # damaged, or another shape
            raise UserError(f'{path} does not load into this model ({detail(e)})') from None
        except Exception as e:  # the Rust reader's own errors on a damaged file
            raise UserError(f'{path} is not a loadable weights file ({detail(e)})') from None
        return
    state = load_tensors(path)
    recomputed = {name for name, _ in model.named_buffers()} - set(model.state_dict())
    try:
        model.load_state_dict({k: v for k, v in state.items() if k not in recomputed})
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as e:
        raise UserError(f'{path} does not load into this model ({detail(e)})') from None


def load_info(path: Path) -> Any:
    """A checkpoint's `info.json`: its own file, not a link (as every file of a checkpoint)."""
    if (Path(path) / INFO).is_symlink():
        raise UserError(f'{Path(path) / INFO} is a link, not a file of the checkpoint')
    text = files.read_text(Path(path) / INFO)
    try:
        return json.loads(text)
    except ValueError as e:
        raise UserError(f'{Path(path) / INFO} is not valid JSON ({detail(e)})') from None


# ## Complete checkpoints
#
# A checkpoint folder is complete when its `info.json` is an index that names the files needed
# (the weights; for a resume the training state too), every name is a plain file name inside
# the folder (not an absolute path, not `..`, not a link), and every file it names that is
# there has the size the index records. Whether the files *load* is found when they are loaded;
# the run store then names the newest other complete checkpoint.

def problem(path: Path, need: Sequence[str] = (WEIGHTS,)) -> Optional[str]:
    """Why the checkpoint folder `path` lacks what `need` names, or `None` when it is complete for it."""
    try:
        info = load_info(path)
    except UserError:
        return f'{INFO} is missing or damaged'
    if not isinstance(info, dict) or not info:
        return f'{INFO} names no files'
    sizes = info.get(SIZES)
    named = {k: v for k, v in info.items() if k not in NOT_FILES}
    for name in need:
        if name not in named:
            return f'{INFO} names no {name}'
    for name, file in named.items():
        if not isinstance(file, str) or not files.is_plain_name(file):
            return f'{INFO} names a file outside the checkpoint: {file!r}'
        where = Path(path) / file
        if name not in need and not where.exists() and not where.is_symlink():
            # (the training state, deleted to save disk: the weights still generate)
            continue
        # a link out of the checkpoint is not its file
        if where.is_symlink() or not where.is_file():
            return f'{file} is missing or not a regular file'
        size = where.stat().st_size
        # (checkpoints written before sizes were recorded have none to compare with)
        expected = sizes.get(file) if isinstance(sizes, dict) else None
        if size == 0 or (expected is not None and expected != size):
            return f'{file} is truncated ({size:,} bytes, not {expected:,})' if isinstance(expected, int) \
                else f'{file} is empty'
    return None


def files_of(path: Path) -> Dict[str, str]:
    """What a checkpoint's `info.json` names: `{'model': 'model.safetensors', 'training': 'training.pth'}`."""
    return {k: v for k, v in load_info(path).items() if k not in NOT_FILES}


def steps_complete(checkpoints_dir: Path, need: Sequence[str] = (WEIGHTS,)) -> List[int]:
    """The steps of the complete checkpoints under `checkpoints/`, oldest first."""
    return [s for s in steps(checkpoints_dir) if problem(Path(checkpoints_dir) / str(s), need) is None]


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
