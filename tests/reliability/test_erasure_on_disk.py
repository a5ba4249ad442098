"""After ``delete-user`` neither the user's id nor their vectors are anywhere in the Edge store's files.

The store's folder is read byte for byte (segments, WAL, payload indexes, everything) for the user id, their
point ids (as text and as UUID bytes), their photos' hashes, and the float32 bytes of each of their vectors.
Before the erasure the same search finds them, so their absence afterwards means something.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from engine.feedback import parse_event, record_feedback
from engine.likes import record_likes
from engine.schema import PHOTOS, USERS, photo_point_id, user_point_id
from engine.settings import Settings
from engine.store import open_store
from engine.store.base import Point
from engine.store.edge import EdgeStore
from engine.users import delete_user
from ingestion.job import run_ingest


def _needles(settings: Settings, uid: str) -> dict[str, bytes]:
    """Every byte string that would betray ``uid``: ids, hashes, vectors (float32, as stored)."""
    out: dict[str, bytes] = {"user id": uid.encode()}
    with open_store(settings) as store:
        upid = user_point_id(uid)
        out["user point id"] = upid.encode()
        out["user point uuid bytes"] = uuid.UUID(upid).bytes
        (user,) = store.retrieve(USERS, [upid], with_vectors=True)
        assert user.vector is not None
        out["user vector"] = np.asarray(user.vector, np.float32).tobytes()
        photos = [p for p in store.scroll(PHOTOS, with_vectors=True) if p.payload.get("user_id") == uid]
        assert photos
        for i, p in enumerate(photos):
            out[f"photo {i} id"] = p.id.encode()
            out[f"photo {i} uuid bytes"] = uuid.UUID(p.id).bytes
            out[f"photo {i} sha256"] = str(p.payload["photo_sha256"]).encode()
            out[f"photo {i} vector"] = np.asarray(p.vector, np.float32).tobytes()
    return out


def _found(root: Path, needles: dict[str, bytes]) -> dict[str, list[str]]:
    hits: dict[str, list[str]] = {}
    for f in sorted(root.rglob("*")):
        if f.is_file():
            data = f.read_bytes()
            for what, needle in needles.items():
                if needle in data:
                    hits.setdefault(what, []).append(str(f.relative_to(root)))
    return hits


@pytest.fixture
def small_store(tmp_path: Path) -> Settings:
    """A small Edge store written directly (no encoder): enough for the folder mechanics."""
    settings = Settings(store_path=tmp_path / "small", progress=False)
    rng = np.random.default_rng(0)
    with open_store(settings) as store:
        store.setup("enc", 8)
        store.upsert(
            PHOTOS,
            [Point(photo_point_id(f"u{i}", "x"), rng.random(8, np.float32), {"user_id": f"u{i}"}) for i in range(9)],
        )
        store.upsert(
            USERS, [Point(user_point_id(f"u{i}"), rng.random(8, np.float32), {"user_id": f"u{i}"}) for i in range(9)]
        )
        store.optimize()
    return settings


@pytest.fixture
def ingested(demo: Path, tiny_encoder, rel_settings: Settings) -> tuple[Path, Settings, str]:
    run_ingest(demo, demo / "metadata.csv", settings=rel_settings, encoder=tiny_encoder)
    lines = (demo / "metadata.csv").read_text(encoding="utf-8").splitlines()
    users = sorted({line.split(",")[0] for line in lines[1:]})
    victim, a, b = users[2], users[5], users[6]
    with open_store(rel_settings) as store:
        record_likes(store, a, [victim, b], settings=rel_settings)  # the victim in another's like history
        events = [
            parse_event(victim, a, "like", 1, where="t"),
            parse_event(b, victim, "pass", 2, where="t"),
            parse_event(a, b, "like", 3, where="t"),
        ]
        record_feedback(store, events)
    return demo, rel_settings, victim


def test_delete_user_leaves_no_byte_of_the_user_in_the_store_folder(ingested, tiny_encoder, capsys) -> None:
    from matcher.cli import main

    demo, settings, victim = ingested
    needles = _needles(settings, victim)
    before = _found(settings.store_path, needles)
    # (Point ids are stored as UUID bytes; their text form only where a payload lists them.)
    must = {"user id", "user point uuid bytes", "user vector", "photo 0 uuid bytes", "photo 0 sha256", "photo 0 vector"}
    assert must <= set(before), f"not found before the erasure, so the test would prove little: {before}"

    assert main(["--store", str(settings.store_path), "--no-progress", "delete-user", victim]) == 0
    assert _found(settings.store_path, needles) == {}
    assert {d.name for d in settings.store_path.iterdir() if d.is_dir()} == {
        "photos",
        "users",
        "matcher_meta",
        "feedback",
    }

    # A later ingestion (without the victim's rows) and optimize bring nothing back, and lose nothing else.
    meta = demo / "metadata.csv"
    kept = [ln for ln in meta.read_text(encoding="utf-8").splitlines() if not ln.startswith(victim + ",")]
    meta.write_text("\n".join(kept) + "\n", encoding="utf-8")
    report = run_ingest(demo, meta, settings=settings, encoder=tiny_encoder)
    assert report.counts.photos_stored == 0 and report.optimized
    assert _found(settings.store_path, needles) == {}
    with open_store(settings) as store:
        assert store.count(PHOTOS) == len(kept) - 1
        assert store.count(USERS) == len({ln.split(",")[0] for ln in kept[1:]})


def test_a_kill_between_delete_and_rewrite_is_finished_at_the_next_open(ingested, monkeypatch) -> None:
    _, settings, victim = ingested
    needles = _needles(settings, victim)

    def killed(self: EdgeStore, *, changed: bool = True) -> bool:
        raise KeyboardInterrupt  # stands in for a kill after the deletes, before any rewrite

    with monkeypatch.context() as m:
        m.setattr(EdgeStore, "finish_erasure", killed)
        with pytest.raises(KeyboardInterrupt), open_store(settings) as store:
            delete_user(store, victim, settings=settings)
    assert (settings.store_path / ".erasure-pending").exists()
    assert _found(settings.store_path, needles)  # the bytes are still there: the rewrite is owed
    with open_store(settings) as store:  # any command: the open finishes the erasure
        assert store.count(USERS) > 0
    assert not (settings.store_path / ".erasure-pending").exists()
    assert _found(settings.store_path, needles) == {}


def test_a_kill_between_the_two_renames_is_settled(small_store: Settings) -> None:
    settings = small_store
    root = settings.store_path
    with open_store(settings) as store:
        n = store.count(PHOTOS)
    # The state a kill leaves after "photos -> .old-photos" and before ".rewrite-photos -> photos".
    import shutil

    shutil.copytree(root / "photos", root / ".rewrite-photos")
    (root / "photos").rename(root / ".old-photos")
    with open_store(settings) as store:
        assert store.count(PHOTOS) == n
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["feedback", "matcher_meta", "photos", "users"]


def test_deleting_a_user_not_stored_rewrites_nothing(small_store: Settings, monkeypatch) -> None:
    settings = small_store
    calls: list[str] = []
    monkeypatch.setattr(EdgeStore, "_rewrite", lambda self, c: calls.append(c))
    with open_store(settings) as store:
        assert delete_user(store, "nobody_here", settings=settings) == 0
    assert calls == [] and not (settings.store_path / ".erasure-pending").exists()


@pytest.mark.slow
def test_several_users_in_one_command_pay_one_rewrite(ingested, capsys, monkeypatch) -> None:
    from matcher.cli import main

    demo, settings, victim = ingested
    lines = (demo / "metadata.csv").read_text(encoding="utf-8").splitlines()
    other = sorted({line.split(",")[0] for line in lines[1:]})[9]
    needles = {f"{u} {k}": v for u in (victim, other) for k, v in _needles(settings, u).items()}
    rewrites: list[str] = []
    real = EdgeStore._rewrite
    monkeypatch.setattr(EdgeStore, "_rewrite", lambda self, c: (rewrites.append(c), real(self, c))[1])
    code = main(["--store", str(settings.store_path), "delete-user", victim, other, "nobody_here", victim])
    out = capsys.readouterr().out
    assert code == 1  # one of them was not stored
    assert f"{victim}: removed" in out and f"{other}: removed" in out and "nobody_here: not in the store" in out
    assert sorted(rewrites) == ["feedback", "matcher_meta", "photos", "users"]  # each collection once
    assert _found(settings.store_path, needles) == {}


@pytest.mark.slow
def test_local_mode_leaves_no_id_after_delete_user(demo: Path, tiny_encoder, rel_settings: Settings) -> None:
    from matcher.cli import main

    settings = rel_settings.model_copy(update={"store_backend": "local"})
    meta = demo / "metadata.csv"
    lines = meta.read_text(encoding="utf-8").splitlines()
    victim = sorted({line.split(",")[0] for line in lines[1:]})[2]
    run_ingest(demo, meta, settings=settings, encoder=tiny_encoder)
    needles = _needles(settings, victim)
    before = _found(settings.store_path, needles)
    # Local mode pickles its points into SQLite: the id and hashes are there as text, the vectors not as float32.
    assert {"user id", "photo 0 sha256"} <= set(before), before
    assert main(["--store", str(settings.store_path), "--backend", "local", "delete-user", victim]) == 0
    assert _found(settings.store_path, needles) == {}
