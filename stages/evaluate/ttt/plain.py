"""The 'none' mode: no test-time training. The runtime's own scorer scores the stream's windows
(``scoring.scorer``); nothing of ``ttt`` runs, so an artifact packed without it scores this mode."""

from __future__ import annotations

from .mode import TTTMode, register

MODE = register(TTTMode(
    name="none",
    help="'none' (the default) scores the --seq-len windows, --stride apart, with no adaptation.",
))
