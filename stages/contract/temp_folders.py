"""Golf's temporary folders beside a stage folder, marked so that clean-up never takes another's.

A stage writes into ``.<name>.tmp-<pid>-<random>`` and, when it replaces an old folder, first moves
that one to ``.<name>.old-<random>``. A killed writer leaves either behind. A name alone proves
nothing (a user may keep ``.eval.tmp-my-notes``), so golf writes a marker file into each such
folder before anything else, naming the stage and the folder it is for; clean-up removes only
folders carrying that marker, and only while it holds the stage folder's lock.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

MARKER_NAME = ".golf-temporary"
MARKER_TITLE = "golf temporary folder"


def new_temporary(out_dir: Path, stage: str, run_id: str) -> Path:
    """Create and mark the temporary folder a writer of ``out_dir`` builds its output in."""
    folder = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    mark(folder, out_dir, stage, run_id)
    return folder


def set_aside(out_dir: Path, stage: str, run_id: str) -> Path:
    """Move the old ``out_dir`` out of the way (to be removed once the new one is in place), marked."""
    old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(out_dir, old)
    mark(old, out_dir, stage, run_id)
    return old


def mark(folder: Path, out_dir: Path, stage: str, run_id: str) -> None:
    (folder / MARKER_NAME).write_text(_marker_text(out_dir, stage, run_id))


def unmark(folder: Path) -> None:
    """Take the marker out of a temporary folder about to become the stage folder."""
    (folder / MARKER_NAME).unlink()


def _marker_text(out_dir: Path, stage: str, run_id: str) -> str:
    return f"{MARKER_TITLE}\nstage:{stage}\nfor:{out_dir.name}\npid:{os.getpid()}\nrun:{run_id}\n"


def is_marked(folder: Path, out_dir: Path, stage: str) -> bool:
    """Whether ``folder`` is a real folder that golf marked as a temporary one of ``stage`` for ``out_dir``."""
    marker = folder / MARKER_NAME
    if folder.is_symlink() or not folder.is_dir() or marker.is_symlink() or not marker.is_file():
        return False
    try:
        lines = marker.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    return lines[:3] == [MARKER_TITLE, f"stage:{stage}", f"for:{out_dir.name}"]


def leftovers(out_dir: Path, stage: str) -> list[Path]:
    """Marked temporary and half-replaced folders that killed writers of ``out_dir`` left behind."""
    patterns = (f".{out_dir.name}.tmp-*", f".{out_dir.name}.old-*")
    found = (path for pattern in patterns for path in out_dir.parent.glob(pattern))
    return sorted(path for path in found if is_marked(path, out_dir, stage))


def remove_leftovers(out_dir: Path, stage: str) -> list[Path]:
    """Remove what killed writers of ``out_dir`` left; only call while holding its lock."""
    removed = []
    for path in leftovers(out_dir, stage):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
