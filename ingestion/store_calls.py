"""Store calls as the ingestion job makes them: retried with bounded backoff, timed per stage.

A transient ``StoreUnavailable`` (a server restarting, a disk hiccup) is retried; a held lock is not (it will
not go away by waiting). When the tries are spent the error says that what was written is kept and that
running the same command again finishes the job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from engine.errors import StoreLocked, StoreUnavailable
from engine.settings import IngestSettings
from ingestion.report import IngestReport

log = logging.getLogger(__name__)

T = TypeVar("T")


class Retry(Protocol):
    """A store-call policy: ``fn(*args, **kwargs)`` retried on a transient ``StoreUnavailable``."""

    def __call__(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...


@contextmanager
def timed(report: IngestReport, stage: str) -> Iterator[None]:
    """Add the time spent in the block to ``report.stage_seconds.<stage>``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        setattr(report.stage_seconds, stage, getattr(report.stage_seconds, stage) + time.perf_counter() - t0)


def retryable(exc: BaseException) -> bool:
    # A held lock will not go away by waiting a few seconds; every other StoreUnavailable may.
    return isinstance(exc, StoreUnavailable) and not isinstance(exc, StoreLocked)


def retry_store_call(ing: IngestSettings, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, retried with bounded backoff (``ing.retry_attempts``, ``ing.retry_max_wait_s``)
    on a transient ``StoreUnavailable``; raises ``StoreUnavailable`` saying to re-run once they are spent,
    ``StoreLocked`` at once."""

    def warn(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("store %s failed (try %d of %d): %s", what, state.attempt_number, ing.retry_attempts, exc)

    retrying = Retrying(
        retry=retry_if_exception(retryable),
        stop=stop_after_attempt(ing.retry_attempts),
        wait=wait_exponential(multiplier=0.25, max=ing.retry_max_wait_s),
        before_sleep=warn,
        reraise=True,
    )
    try:
        return retrying(fn, *args, **kwargs)
    except StoreUnavailable as exc:
        if isinstance(exc, StoreLocked):
            raise
        raise StoreUnavailable(
            f"store still failing after {ing.retry_attempts} tries ({what}): {exc}. What was written "
            "before is kept; run the same command again to finish"
        ) from exc
