"""Output paths: where a command may write without destroying anything golf did not write.

Every output a command writes (a stage folder, the ``--token-nll`` file) passes ``check_output_path``
before any work starts, and is refused in one line when:

- the path, or any folder on the way to it, is a symlink: a link makes one name reach another
  run's folder (``artifacts/linkrun/tokenize -> ../small3/tokenize``) and --force would replace
  that one;
- it is, holds, or lies inside one of the command's inputs (``tokenize --import DIR --out DIR``
  would delete what it imports; an output inside an input folder changes that folder);
- it exists and is not golf's own output of the same kind, or it is and --force was not given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from ..errors import GolfError
from .manifest import MANIFEST_NAME, Manifest


@dataclass(frozen=True)
class OutputKind:
    """What golf writes at an output path, and how to recognize one it wrote earlier."""

    name: str
    """The kind: a stage name for a stage folder ('eval'), or a file kind ('receipts')."""
    noun: str
    """The kind in words, for messages ("a golf 'eval' folder")."""
    identify: Callable[[Path], tuple[str | None, str]]
    """For an existing path: (the kind golf wrote there, or None; what the path is, in words)."""


def stage_folder(stage: str) -> OutputKind:
    """The output kind of a stage's folder."""
    return OutputKind(stage, f"a golf '{stage}' folder", identify_stage_folder)


def identify_stage_folder(path: Path) -> tuple[str | None, str]:
    """The stage a golf manifest in ``path`` names (failed stages included), or None and why not."""
    if path.is_symlink() or not path.is_dir():
        return None, "is not a folder golf wrote"
    try:
        stage = Manifest.from_json((path / MANIFEST_NAME).read_text("utf-8", errors="replace"), str(path)).stage
    except Exception:  # unreadable, not JSON, not golf's schema, fields of the wrong type: not golf's
        return None, "has no golf manifest"
    return stage, f"is a golf '{stage}' folder"


Inputs = Mapping[str, "str | Path | None"]


def check_output_path(path: str | Path, kind: OutputKind | str, force: bool, inputs: Inputs | None = None) -> Path:
    """Refuse an output path that could destroy or change what golf did not write there; return it
    absolute. ``kind`` is a stage name (its folder) or an ``OutputKind``; ``inputs`` maps a label
    ("--data") to each path the command reads (None: not given)."""
    kind = stage_folder(kind) if isinstance(kind, str) else kind
    given = Path(os.getcwd(), path)  # getcwd is the physical path: only the given part can hold a link
    absolute = Path(os.path.normpath(given))
    # As given, the system follows a link before a '..' ('link/../x'); normalized is what golf uses.
    link = first_symlink(given) or first_symlink(absolute)
    if link is not None:
        raise GolfError(f"{path}: {link} is a symlink (to {os.readlink(link)}); an output path must reach its "
                        f"folder without one (give {Path(os.path.realpath(given))} if that is what you mean)")
    _refuse_inputs(path, absolute, inputs or {})
    if not os.path.lexists(absolute):
        return absolute
    if not force:
        raise GolfError(f"{path}: already exists (pass --force to replace it; --force replaces only {kind.noun})")
    found, described = kind.identify(absolute)
    if found != kind.name:
        raise GolfError(f"{path}: {described}; --force replaces only {kind.noun}, so nothing was touched")
    return absolute


def first_symlink(absolute: Path) -> Path | None:
    """The first component of ``absolute`` (itself included) that is a symlink, or None."""
    current = Path(absolute.anchor)
    for part in absolute.parts[1:]:
        current = current / part
        if current.is_symlink():
            return current
        if not current.exists():
            return None  # nothing below a missing folder exists, links included
    return None


def _refuse_inputs(path: str | Path, absolute: Path, inputs: Inputs) -> None:
    """Refuse an output that is, holds or lies inside an input (compared resolved: an input may
    be reached through a symlink)."""
    for label, given in inputs.items():
        if given is None:
            continue
        source = Path(given).resolve()
        if absolute == source:
            relation = "is"
        elif source in absolute.parents:
            relation = "is inside"
        elif absolute in source.parents:
            relation = "holds"
        else:
            continue
        raise GolfError(f"{path}: {relation} {label} {given}, which this command reads; an output never "
                        "replaces, holds or goes inside an input, so nothing was touched")
