"""Privacy: an erased user leaves nothing behind in any collection, including other users' like histories and
the taste vectors computed from them; payloads never carry photo bytes.

Set-up: the demo population ingested with the real job, reciprocity refreshed, and some users' likes recorded,
several of them naming the user who is then deleted.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.errors import UserNotFound
from engine.feedback import Event, record_feedback
from engine.likes import record_likes
from engine.ranking.rerank import taste_vector
from engine.recommend import recommend
from engine.schema import FEEDBACK, LIKED_IDS, META, PHOTOS, TASTE, USERS, user_point_id
from engine.settings import Settings
from engine.store import open_store
from engine.users import delete_user
from ingestion.job import run_ingest
from matcher.cli import main

VICTIM = "user_005"
# Who liked whom before the erasure: three users liked the victim, one did not.
LIKES = {"user_001": [VICTIM, "user_002"], "user_003": [VICTIM], "user_004": ["user_002", VICTIM, "user_006"],
         "user_007": ["user_002"]}  # fmt: skip


def all_points(store: Any) -> dict[str, list[Any]]:
    return {c: list(store.scroll(c, with_vectors=True)) for c in (PHOTOS, USERS, META, FEEDBACK)}


@pytest.fixture
def populated(demo: Path, rel_settings: Settings, pixel_embedder: Any) -> Settings:
    run_ingest(demo, demo / "metadata.csv", settings=rel_settings, encoder=pixel_embedder)
    with open_store(rel_settings) as store:
        for uid, liked in LIKES.items():
            record_likes(store, uid, liked, settings=rel_settings)
        # Logged decisions in every direction: given by the victim, received by them, and one not about them.
        record_feedback(
            store,
            [Event(VICTIM, "user_001", "like"), Event("user_002", VICTIM, "pass"), Event("user_003", VICTIM, "block"),
             Event("user_001", "user_002", "like")],
        )  # fmt: skip
    return rel_settings


def test_delete_user_leaves_nothing_in_any_collection(populated: Settings, demo: Path) -> None:
    settings = populated
    with open_store(settings) as store:
        before = all_points(store)
        victim_pids = {p.id for p in before[PHOTOS] if p.payload["user_id"] == VICTIM}
        victim_shas = {p.payload["photo_sha256"] for p in before[PHOTOS] if p.payload["user_id"] == VICTIM}
        victim_vecs = [p.vector for c in (PHOTOS, USERS) for p in before[c] if p.payload["user_id"] == VICTIM]
        assert victim_pids and len(victim_vecs) == len(victim_pids) + 1
        # The like histories really name the victim before the erasure (else this test proves nothing).
        likers = [p for p in before[USERS] if VICTIM in (p.payload.get(LIKED_IDS) or [])]
        assert {p.payload["user_id"] for p in likers} == {u for u, liked in LIKES.items() if VICTIM in liked}

        victim_events = [p for p in before[FEEDBACK] if VICTIM in json.dumps(p.payload)]
        assert len(victim_events) == 3
        removed = delete_user(store, VICTIM)
        assert removed == len(victim_pids) + 1 + len(victim_events)
        after = all_points(store)

    # Every collection the store has is scanned: on Edge, one folder per collection.
    assert {d.name for d in settings.store_path.iterdir() if d.is_dir()} == {PHOTOS, USERS, META, FEEDBACK}
    needles = {VICTIM, user_point_id(VICTIM), *victim_pids, *victim_shas}
    for collection, points in after.items():
        for p in points:
            text = json.dumps(p.payload)
            found = [n for n in needles if n in text or p.id == n]
            assert not found, f"{collection} point {p.id} still holds {found}"
            if p.vector is not None and collection not in (META, FEEDBACK):
                for v in victim_vecs:
                    assert not np.allclose(p.vector, v, atol=1e-6), f"{collection} point {p.id}: victim's vector"
    assert len(after[PHOTOS]) == len(before[PHOTOS]) - len(victim_pids)
    assert len(after[USERS]) == len(before[USERS]) - 1
    assert len(after[FEEDBACK]) == len(before[FEEDBACK]) - 3  # only the event between two others is left

    # The likers' taste vectors are recomputed from the likes that remain (not from the victim's vector).
    vec = {p.payload["user_id"]: np.asarray(p.vector, np.float32) for p in after[USERS]}
    for p in after[USERS]:
        uid = p.payload["user_id"]
        if uid not in LIKES:
            continue
        remaining = [u for u in LIKES[uid] if u != VICTIM]
        assert p.payload[LIKED_IDS] == remaining, uid
        if remaining:
            want = taste_vector(vec[uid], np.stack([vec[u] for u in remaining]), settings.recommend.taste_blend)
            np.testing.assert_allclose(p.payload[TASTE], want, atol=1e-5, err_msg=uid)
        else:
            assert TASTE not in p.payload, uid

    # Nobody is recommended the victim any more; the victim cannot ask for recommendations.
    with open_store(settings) as store:
        for uid in LIKES:
            assert VICTIM not in {m.user_id for m in recommend(uid, 50, store=store, settings=settings)}
        with pytest.raises(UserNotFound):
            recommend(VICTIM, store=store, settings=settings)


def test_delete_user_command_then_again(populated: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--store", str(populated.store_path), "--no-progress"]
    assert main([*flags, "delete-user", VICTIM]) == 0
    assert VICTIM in capsys.readouterr().out
    assert main([*flags, "delete-user", VICTIM]) == 1  # nothing left to remove
    assert "not in the store" in capsys.readouterr().out
    with open_store(populated) as store:
        for c, points in all_points(store).items():
            assert not [p.id for p in points if VICTIM in json.dumps(p.payload)], c


def test_payloads_hold_no_photo_bytes(populated: Settings, demo: Path) -> None:
    """Only the documented payload fields, no bytes, no long strings; no photo's bytes in any encoding."""
    with open_store(populated) as store:
        points = all_points(store)
    photo_keys = {"user_id", "gender", "age", "photo_sha256", "source_path", "encoder_id"}
    user_keys = {"user_id", "gender", "age", "seeking", "age_min", "age_max", "n_photos", "photo_ids",
                 "encoder_id", "kth_sim", "kth_k", "kth_top", LIKED_IDS, TASTE}  # fmt: skip
    dumped = []
    for collection, allowed in ((PHOTOS, photo_keys), (USERS, user_keys)):
        for p in points[collection]:
            assert set(p.payload) <= allowed, (collection, set(p.payload) - allowed)
            assert collection != PHOTOS or set(p.payload) == photo_keys
            for key, value in p.payload.items():
                assert not isinstance(value, bytes | bytearray), key
                assert not isinstance(value, str) or len(value) <= 256, key
            dumped.append(json.dumps(p.payload))
    text = "\n".join(dumped)
    files = sorted((demo / "photos").rglob("*.*"))
    assert len(files) == len(points[PHOTOS])
    for f in files:
        head = f.read_bytes()[16:64]  # past the format magic, which is common to every file
        for enc in (base64.b64encode(head).decode()[:32], head.hex()[:48], head.decode("latin-1")[:24]):
            assert enc not in text, f.name
