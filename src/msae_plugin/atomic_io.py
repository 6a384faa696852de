"""Crash-safe file and folder writes: a reader sees the old version or the new one, never half.

A process killed while writing (SIGKILL, power loss, an out-of-memory kill) must not leave a
truncated file or a half-filled folder where a later run looks for a complete one. Both helpers
here write to a hidden temporary sibling, ``fsync`` it, then ``os.replace`` it into place (atomic
on POSIX within one file system) and ``fsync`` the parent folder so the rename itself survives a
crash.

Temporary siblings are named ``.<name>.tmp-<random>``; :func:`is_temporary` recognises them so
that readers skip them and :func:`remove_temporaries` can clean up after a killed writer.

This module is deliberately low-level (standard library only) so any package of msae-plugin can
use it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

#: infix of every temporary sibling this module creates
TMP_INFIX = ".tmp-"


def temporary_sibling(path: Path) -> Path:
    """A fresh hidden name next to ``path`` (same folder, so the final rename is atomic)."""
    return path.parent / f".{path.name}{TMP_INFIX}{uuid.uuid4().hex[:12]}"


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is a temporary sibling left by (possibly a killed) atomic write."""
    return path.name.startswith(".") and TMP_INFIX in path.name


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to disk."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders; the rename is still atomic
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's file-creation mask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file, then move it onto ``path`` atomically.

    ``write`` receives the temporary path (pass it to ``save_file``, ``torch.save``, ``open``...).
    On any error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        write(tmp)
        # some writers (safetensors' save_file) create 0600 files; give the mode open() gives,
        # so a saved checkpoint can be shared like any other file
        os.chmod(tmp, 0o666 & ~_umask())
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` for a text file."""
    return atomic_write(path, lambda p: p.write_text(text))


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder; when the block ends without error, it becomes ``path``.

    Every file in it is ``fsync``-ed before the folder is renamed into place, so ``path`` either
    does not exist, or holds the previous complete version, or the new complete one. An existing
    ``path`` is replaced (moved aside first, since ``os.replace`` cannot replace a non-empty
    folder, and deleted after). On an error the temporary folder is deleted.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        for child in sorted(tmp.rglob("*"), reverse=True):  # files before their folders
            fsync_path(child)
        fsync_path(tmp)
        old = None
        if path.exists():
            old = temporary_sibling(path)
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary siblings (files or folders) directly inside ``folder``.

    Call it only where no other process is writing (e.g. from the one training run that owns a
    checkpoint folder). Returns what was removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for child in folder.iterdir():
        if is_temporary(child):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
            removed.append(child)
    return removed


@contextmanager
def staged_files(dest: str | Path, last: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a temporary folder next to ``dest``; when the block ends without error, move each
    file written there into ``dest`` with ``os.replace`` (the names in ``last`` go last).

    For an output folder that may hold other files (so it cannot be replaced as a whole, as
    :func:`atomic_directory` does): every file in ``dest`` is then either its previous complete
    version or the new complete one, never truncated; writing the config (``last``) after the
    weights means a kill in between leaves the old config, which the loaders' shape checks
    reject clearly instead of reading half a file. On an error nothing in ``dest`` changes.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(dest)
    tmp.mkdir()
    try:
        yield tmp
        files = [f for f in tmp.iterdir() if f.is_file()]
        files.sort(key=lambda f: (f.name in last, last.index(f.name) if f.name in last else 0))
        mode = 0o666 & ~_umask()
        for file in files:
            os.chmod(file, mode)  # as in atomic_write: not safetensors' 0600
            fsync_path(file)
        for file in files:
            os.replace(file, dest / file.name)
        fsync_path(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
