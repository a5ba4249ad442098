"""An exclusive, process-wide lock on an embedded store's folder.

Only one process may open an embedded store: Edge shards refuse a second writer on their WAL, and
qdrant-client's local mode keeps its data in memory and rewrites the folder, so two processes would
corrupt each other's view.
The lock is taken on ``<store_path>/.matcher.lock`` before any backend touches the folder, so both embedded
backends fail the same clear way (``StoreLocked``), and the operating system drops the lock when the holder
exits or is killed, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import IO

# A dependency of qdrant-client (its local mode locks its folder with it); cross-platform flock/LockFileEx.
import portalocker

from engine.errors import StoreLocked, StoreUnavailable

log = logging.getLogger(__name__)

LOCK_NAME = ".matcher.lock"


class FolderLock:
    """Holds ``<folder>/.matcher.lock`` exclusively until ``release()`` (or the process ends)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._file: IO[str] | None = None

    @classmethod
    def acquire(cls, folder: Path) -> FolderLock:
        """Create ``folder`` if needed and lock it.

        Raises ``StoreLocked`` (naming the folder) if another process, or another open store in this
        process, holds it; ``StoreUnavailable`` if the folder cannot be created or written.
        """
        lock = cls(folder)
        try:
            lock.folder.mkdir(parents=True, exist_ok=True)
            f = open(lock.path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        except OSError as exc:
            raise StoreUnavailable(f"cannot open the store folder {lock.folder}: {exc}") from exc
        try:
            portalocker.lock(f, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
        except portalocker.exceptions.LockException as exc:
            f.close()
            raise StoreLocked(
                f"the store folder {lock.folder} is in use by another process (or another open store); "
                "close it first, or point MATCHER_STORE_PATH elsewhere"
            ) from exc
        # Who holds it, for an operator looking at the folder; the lock itself is the flock, not this text.
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        lock._file = f
        log.debug("locked %s", lock.path)
        return lock

    @property
    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        """Unlock (idempotent)."""
        if self._file is None:
            return
        try:
            portalocker.unlock(self._file)
        finally:
            self._file.close()
            self._file = None
