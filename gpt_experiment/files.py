"""
# Files, read and written safely

Every file this project reads was written by someone else, or may have been damaged since; every
file it writes must survive a crash. The rules for both live here, and every module uses them:

* **Reading** (`read_bytes`, `read_text`): only a regular file, checked with `stat` before it
  is opened, so that a FIFO, a device (`/dev/zero`) or a link to one is refused instead of
  hanging or being read forever; at most `max_bytes`; text as UTF-8. Anything else is one
  `UserError` that names the file.
* **Writing**: a file goes to a temporary name that says who writes it
  (`<name>.<pid>@<host>.tmp`), is flushed to disk, and is renamed into place
  (`write_atomically`), so a reader sees the whole file or none. What a killed writer left is
  removed once its process is gone (`remove_leftovers`). A full disk or a read-only folder is
  one `UserError` naming the path.
* **Names** a user types that become folders (`is_plain_name`): one plain name, no separator,
  no `..`, nothing hidden, nothing unprintable.
"""

import os
import re
import socket
import stat
from pathlib import Path
from typing import Any, Callable

from .errors import UserError

# The most a run file (configs, run info, tokenizer, checkpoint index) may hold
RUN_FILE_BYTES = 64 * 1024 * 1024


def regular_file(path) -> Path:
    """`path`, when it is a regular file (`stat` follows links but opens nothing)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UserError(f'{path} is missing') from None
    except OSError as e:
        raise UserError(f'{path} cannot be read ({e.strerror})') from None
    if not stat.S_ISREG(mode):
        raise UserError(f'{path} is not a regular file')
    return path


def read_bytes(path, max_bytes: int = RUN_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `max_bytes`."""
    path = regular_file(path)
    try:
        with open(path, 'rb') as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise UserError(f'{path} cannot be read ({e.strerror})') from None
    if len(data) > max_bytes:
        raise UserError(f'{path} is larger than {max_bytes:,} bytes')
    return data


def read_text(path, max_bytes: int = RUN_FILE_BYTES) -> str:
    """The UTF-8 text of a regular file of at most `max_bytes`."""
    data = read_bytes(path, max_bytes)
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError as e:
        raise UserError(f'{path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})') from None


def is_plain_name(name: str) -> bool:
    """A single file or folder name: no separator, not `.` or `..`, nothing hidden or unprintable."""
    return (bool(name) and name == Path(name).name and not name.startswith('.') and '\\' not in name
            and name.isprintable())


# ## Writing

def temporary(path: Path) -> Path:
    """Where this process writes `path` before renaming it into place."""
    return path.with_name(f'{path.name}.{os.getpid()}@{socket.gethostname()}.tmp')


def fsync_dir(path: Path):
    """Make a rename or a new entry in `path` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path):
    """Flush a file written by someone else's writer (a library's) to disk."""
    fd = os.open(str(path), os.O_RDONLY)
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


def cannot_write(path, e: BaseException) -> UserError:
    """
    The one line for a file that could not be written. A full disk comes as `OSError` from
    Python's own writes and as `RuntimeError` from `torch.save`'s writer, which names no path.
    """
    where = getattr(e, 'filename', None) or path
    detail = getattr(e, 'strerror', None) or ' '.join(str(e).split())[:200]
    return UserError(f'cannot write {where}: {detail}')


def write_atomically(path: Path, write: Callable[[Any], None]):
    """Write `path` whole or not at all: into a temporary file, flushed, then renamed."""
    path = Path(path)
    tmp = temporary(path)
    try:
        write_durably(tmp, write)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        raise cannot_write(path, e) from None
    fsync_dir(path.parent)


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except (OverflowError, ValueError):  # not a pid at all
        return False
    return True


def remove_leftovers(folder: Path):
    """Remove the temporary files in `folder` whose writers were on this machine and are gone."""
    for tmp in Path(folder).glob('*.tmp'):
        writer = re.search(r'\.(\d+)@(.+)\.tmp$', tmp.name)
        if writer and writer.group(2) == socket.gethostname() and not process_alive(int(writer.group(1))):
            tmp.unlink(missing_ok=True)
