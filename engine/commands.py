"""Engine commands: ``recommend``, ``stats``, ``delete-user``. (Filled in by the store and recommend work.)"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001 - argparse has no public type for it
    """Add the engine's commands to the ``matcher`` parser."""
