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


def lock_path(out_dir: Path) -> Path:
    return out_dir.parent / f".{out_dir.name}.lock"


class FolderLock:
    """An exclusive, non-blocking lock on a (future) stage folder; ``release`` removes the file."""

    def __init__(self, out_dir: Path, owner: str):
        self.path = lock_path(out_dir)
        self.fd = self._acquire(out_dir, owner)

    def _acquire(self, out_dir: Path, owner: str) -> int:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise GolfError(f"{out_dir}: another golf process ({holder}) is writing it; wait for it to "
                                "finish or choose another --out/--run") from None
            # The holder before us may have removed the file between our open and our lock:
            # then we hold a lock on an orphan inode and must take the lock on the new file.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"pid {os.getpid()}, run {owner}".encode())
                return fd
            os.close(fd)

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)  # closing drops the flock
            self.fd = -1


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode("utf-8", errors="replace").strip() or "pid unknown"
    except OSError:
        return "pid unknown"
