"""One writer per stage folder: an exclusive lock held for as long as a stage writes.

The lock is ``flock`` on a hidden file beside the folder (``.<name>.lock``). The kernel drops it
when its process dies, SIGKILL included, so a lock never outlives its writer and a second golf
process aimed at the same folder is refused at start instead of losing at the end. The file
holds the writer's pid and run id, for the message the loser prints.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import GolfError


HOLDER_PREFIX = "pid "  # what every lock file golf writes begins with


def lock_path(out_dir: Path) -> Path:
    return out_dir.parent / f".{out_dir.name}.lock"


class FolderLock:
    """An exclusive, non-blocking lock on a (future) stage folder; ``release`` removes the file."""

    def __init__(self, out_dir: Path, owner: str):
        self.path = lock_path(out_dir)
        self.fd = self._acquire(out_dir, owner)

    def _acquire(self, out_dir: Path, owner: str) -> int:
        while True:
            fd = self._open(out_dir)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise GolfError(f"{out_dir}: another golf process ({holder}) is writing it; wait for it to "
                                "finish or choose another --out/--run") from None
            if not _is_golf_lock(fd):
                os.close(fd)
                raise GolfError(f"{self.path}: a file golf did not write has the name of {out_dir.name}'s lock; "
                                "move it away (nothing was touched)")
            # The holder before us may have removed the file between our open and our lock:
            # then we hold a lock on an orphan inode and must take the lock on the new file.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{HOLDER_PREFIX}{os.getpid()}, run {owner}".encode())
                return fd
            os.close(fd)

    def _open(self, out_dir: Path) -> int:
        """The lock file, never through a symlink (truncating it would empty whatever it points at)."""
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError:
            if self.path.is_symlink():
                raise GolfError(f"{self.path}: the lock file of {out_dir.name} is a symlink; golf writes "
                                "nothing through one (nothing was touched)") from None
            raise

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)  # closing drops the flock
            self.fd = -1


def _is_golf_lock(fd: int) -> bool:
    """Empty (just made, here or by a writer that died before writing) or naming a golf writer."""
    try:
        head = os.pread(fd, len(HOLDER_PREFIX), 0)
    except OSError:
        return False
    return head in (b"", HOLDER_PREFIX.encode())


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode("utf-8", errors="replace").strip() or "pid unknown"
    except OSError:
        return "pid unknown"
