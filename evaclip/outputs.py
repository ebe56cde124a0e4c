"""Output files: checked before the work starts, written atomically into regular files.

Every file a command writes for the user (eval results, embeddings, converted and exported checkpoints,
run summaries) goes through this module, so the rules live in one place:

- :func:`check_output` runs *before* the work: an existing target must be a regular file (a symlink, FIFO,
  device node or folder is refused, never replaced), it is kept unless the caller allows overwriting, and the
  folder it goes in must exist or be creatable and be writable (a read-only file system or a path under a
  file is found now, not after an hour of work).
- :func:`atomic_write` writes through a temporary file in the same folder and renames it over the target, so a
  crash never leaves half a file, and gives the result the permissions a plain ``open()`` would
  (``0666 & ~umask``, usually 0644) rather than ``mkstemp``'s 0600.

Failures are :class:`~evaclip.errors.EvaclipError` with one line that names the path and what to do.
"""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from evaclip.errors import EvaclipError


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _existing_ancestor(path: Path) -> Path:
    p = path.parent
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def check_output(path: str | os.PathLike, *, overwrite: bool | None = False, what: str = "output") -> Path:
    """Check that ``path`` can be written as a regular file, before any work is done; returns it as a Path.

    ``overwrite``: ``False`` refuses an existing file, ``True`` allows replacing one, ``None`` leaves that
    decision to the caller (e.g. ``--skip-existing``). Non-regular targets are always refused.
    """
    path = Path(path)
    if str(path) in ("", "."):
        raise EvaclipError(f"{what}: empty path; give a file name")
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        st = None
    except OSError as e:
        raise EvaclipError(f"{what} {path}: cannot be inspected ({e.strerror or e})") from None
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise EvaclipError(f"{what} {path} exists and is {_kind(st.st_mode)}; evaclip writes only regular "
                               "files and does not replace it: choose another path")
        if overwrite is False:
            raise EvaclipError(f"{what} {path} exists; pass --overwrite to replace it or choose another path")
    ancestor = _existing_ancestor(path)
    if not ancestor.is_dir():
        raise EvaclipError(f"{what} {path}: {ancestor} is a file, not a folder; choose another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        reason = "is on a read-only file system" if _read_only_fs(ancestor) else "is not writable"
        raise EvaclipError(f"{what} {path}: the folder {ancestor} {reason}; choose a writable location")
    return path


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, what: str = "output") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` (a regular file) atomically.

    The caller writes the temporary file by any means (a library's ``save(path)``); on an exception it is
    removed and the target is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise EvaclipError(f"{what} {path}: cannot write there ({e.strerror or e}); choose a writable location") from None
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _default_mode())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        st = os.lstat(path) if os.path.lexists(path) else None
        if st is not None and not stat.S_ISREG(st.st_mode):  # appeared since check_output: still never replace it
            raise EvaclipError(f"{what} {path} is {_kind(st.st_mode)}; evaclip does not replace it")
        os.replace(tmp, path)
    except OSError as e:
        raise EvaclipError(f"{what} {path}: write failed ({e.strerror or e}); nothing was replaced") from None
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], None], *, what: str = "output") -> Path:
    """Call ``writer(tmp_path)`` and move the result over ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, what=what) as tmp:
        writer(tmp)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, *, what: str = "output") -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), what=what)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, what: str = "output") -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), what=what)
