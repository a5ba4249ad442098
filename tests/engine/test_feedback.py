"""Feedback as data (engine.feedback) on every backend: round trip, idempotence, blocks, erasure, bad rows."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from engine.errors import InvalidInput, UserNotFound
from engine.feedback import (
    Event,
    all_events,
    blocked_with,
    decisions_about,
    decisions_of,
    read_feedback_csv,
    record_feedback,
)
from engine.schema import FEEDBACK
from engine.users import delete_user
from tests.engine.test_store_users import DIM, fill

if TYPE_CHECKING:
    from tests.engine.conftest import StoreFactory


def _store(store_factory: StoreFactory):  # type: ignore[no-untyped-def]
    store = store_factory.open()
    store.setup("enc", DIM)
    fill(store, {f"u{i}": 1 for i in range(5)})
    return store


def test_round_trip_and_idempotence(store_factory: StoreFactory) -> None:
    store = _store(store_factory)
    events = [Event("u0", "u1", "like", 1.0), Event("u0", "u2", "pass", 2.0), Event("u3", "u0", "like", 3.0)]
    first = record_feedback(store, events)
    assert (first.added, first.updated, first.unchanged) == (3, 0, 0)
    again = record_feedback(store, events)  # the same events twice count once
    assert (again.added, again.updated, again.unchanged) == (0, 0, 3)
    assert store.count(FEEDBACK) == 3
    assert decisions_of(store, "u0") == {"u1": "like", "u2": "pass"}
    assert decisions_about(store, "u0") == {"u3": "like"}
    # A later decision on the same pair replaces the earlier one; an older one arriving late does not.
    rep = record_feedback(store, [Event("u0", "u1", "pass", 5.0), Event("u0", "u2", "like", 0.5)])
    assert (rep.updated, rep.unchanged) == (1, 1)
    assert decisions_of(store, "u0") == {"u1": "pass", "u2": "pass"}
    assert sorted((e.viewer_id, e.candidate_id) for e in all_events(store)) == [
        ("u0", "u1"), ("u0", "u2"), ("u3", "u0")
    ]  # fmt: skip


def test_block_excludes_both_ways_for_good(store_factory: StoreFactory) -> None:
    store = _store(store_factory)
    record_feedback(store, [Event("u1", "u2", "block", 1.0), Event("u3", "u1", "report", 1.0)])
    assert blocked_with(store, "u1") == {"u2", "u3"}
    assert blocked_with(store, "u2") == {"u1"}  # the blocked side is excluded too
    record_feedback(store, [Event("u1", "u2", "like", 9.0)])  # a later like does not undo a block
    assert decisions_of(store, "u1") == {"u2": "block"}


def test_delete_user_removes_every_trace_of_feedback(store_factory: StoreFactory) -> None:
    store = _store(store_factory)
    record_feedback(
        store,
        [Event("u0", "u1", "like"), Event("u1", "u0", "pass"), Event("u2", "u1", "block"), Event("u2", "u3", "like")],
    )
    removed = delete_user(store, "u1")
    assert removed == 2 + 3  # one photo + one user point, and three events given or received
    assert [(e.viewer_id, e.candidate_id) for e in all_events(store)] == [("u2", "u3")]
    assert decisions_of(store, "u0") == {} and blocked_with(store, "u2") == set()


def test_bad_rows_name_the_line_and_store_nothing(store_factory: StoreFactory, tmp_path: Path) -> None:
    store = _store(store_factory)
    record_feedback(store, [Event("u0", "u1", "like", 1.0)])
    log = tmp_path / "log.csv"
    log.write_text("viewer_id,candidate_id,decision,ts\nu0,u2,like,1\nu0,u3,maybe,2\n")
    with pytest.raises(InvalidInput, match=r"log\.csv:3: decision 'maybe'"):
        read_feedback_csv(log)
    log.write_text("viewer_id,candidate_id,decision,ts\nu0,u2,like,1\nu4,u4,like,2\n")
    with pytest.raises(InvalidInput, match=r"log\.csv:3: .*themselves"):
        read_feedback_csv(log)
    log.write_text("viewer_id,candidate_id,decision,ts\nu0,u2,LIKE,1\nu0,ghost,pass,2\n")
    events = read_feedback_csv(log)
    assert events[0] == Event("u0", "u2", "like", 1.0)
    with pytest.raises(UserNotFound, match="ghost"):
        record_feedback(store, events)
    assert decisions_of(store, "u0") == {"u1": "like"}  # the batch was refused whole; nothing lost
    log.write_text("viewer,candidate_id,decision\n")
    with pytest.raises(InvalidInput, match="missing column"):
        read_feedback_csv(log)


def test_feedback_command(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.settings import Settings
    from engine.store import open_store
    from matcher.cli import main

    for name in ("MATCHER_QDRANT_URL", "MATCHER_STORE_BACKEND", "MATCHER_COLLECTION_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "store"
    with open_store(Settings(store_path=path, store_backend="edge")) as store:
        store.setup("enc", DIM)
        fill(store, {f"u{i}": 1 for i in range(3)})
    log = tmp_path / "log.csv"
    log.write_text("viewer_id,candidate_id,decision,ts\nu0,u1,like,1\nu0,u1,like,1\nu1,u2,pass,2\n")
    flags = ["--store", str(path), "--backend", "edge"]
    assert main([*flags, "feedback", str(log)]) == 0
    assert "3 events: 2 new, 0 updated, 1 unchanged" in capsys.readouterr().out
    log.write_text("viewer_id,candidate_id,decision,ts\nu0,u2,like,1\nu0,u2,meh,1\n")
    assert main([*flags, "feedback", str(log)]) == 2
    assert "log.csv:3: decision 'meh'" in capsys.readouterr().err
    with open_store(Settings(store_path=path, store_backend="edge")) as store:
        assert decisions_of(store, "u0") == {"u1": "like"}  # the bad file wrote nothing
