"""Bookkeeping for caches derived from the users collection (the reciprocity refresh's sidecar).

A cache (``engine.reciprocity.table``) is a file set in ``<store_path>/<prefix>refresh_cache/`` named by a
random *token*; META records the token of the one cache that matches the users collection. The store keeps
that match honest, whatever code writes:

* before any write to the users collection that names its points (``upsert``, ``set_payload``), their ids are
  appended to ``journal-<token>`` (one id a line). The journal is opened without ``O_CREAT``: a journal that
  is missing makes the write drop the cache instead, so a cache is never trusted with a lost journal;
* before a deletion from the users collection (by id or by filter), a rebuild, or a (re)creation of the
  collection, the cache is *dropped*: the token is cleared in META first, then the files are removed (a
  deleted user's vector and id must not stay on disk; see docs/reliability.md).

A kill at any point leaves either a token whose journal lists every id written since the cache was saved
(ids whose write did not happen are listed too: harmless, they are re-read), or no token (the cache is not
used). Backends without a local folder (a Qdrant server) keep no cache: every call here is a no-op there.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from engine.errors import StoreUnavailable

log = logging.getLogger(__name__)

CACHE_KEY = "users_cache"  # META payload key: the token of the cache that matches the users collection
CACHE_FOLDER = "refresh_cache"  # under the store folder, after the collection prefix


def journal_path(folder: Path, token: str) -> Path:
    return folder / f"journal-{token}"


def append_journal(folder: Path, token: str, ids: Sequence[str]) -> bool:
    """Append ``ids`` to the journal of ``token``; False when the journal is missing or cannot be written
    (the caller then drops the cache). One ``write`` call: a kill leaves whole lines or a cut last line."""
    data = "".join(f"{i}\n" for i in ids).encode()
    try:
        fd = os.open(journal_path(folder, token), os.O_WRONLY | os.O_APPEND)
    except OSError:
        return False
    try:
        os.write(fd, data)
        return True
    except OSError as exc:
        log.warning("cannot append to the refresh cache's journal in %s: %s; dropping the cache", folder, exc)
        return False
    finally:
        os.close(fd)


def read_journal(folder: Path, token: str) -> list[str] | None:
    """The ids journaled for ``token`` (whole lines only), or None when the journal is missing."""
    try:
        text = journal_path(folder, token).read_text()
    except OSError:
        return None
    lines = text.split("\n")
    return [x for x in lines[:-1] if x]  # the last element is "" or a line cut by a kill (never acted on)


def remove_files(folder: Path, keep: str | None = None) -> None:
    """Remove every cache file in ``folder`` except those of token ``keep`` (``keep=None``: the folder too).
    Raises ``StoreUnavailable`` when a file cannot be removed (it may hold a deleted user's data)."""
    if not folder.is_dir():
        return
    for f in folder.iterdir():
        if keep is not None and keep in f.name:
            continue
        try:
            if f.is_dir():
                shutil.rmtree(f)
            else:
                f.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StoreUnavailable(f"cannot remove the refresh cache file {f}: {exc}") from exc
    if keep is None:
        try:
            folder.rmdir()  # the store folder then holds only the collections again
        except OSError:
            pass
