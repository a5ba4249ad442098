"""matcher serve: every route through FastAPI's TestClient, over a store ingested with the tiny encoder."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed (pip install -e '.[serve]')")
pytest.importorskip("httpx", reason="httpx (FastAPI's TestClient) is not installed")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from engine.settings import Settings  # noqa: E402


@pytest.fixture
def client(served: Settings, tiny_encoder: Any) -> Iterator[TestClient]:
    from matcher.service.app import create_app

    with TestClient(create_app(served, encoder=tiny_encoder)) as c:
        yield c


def _some_user(settings: Settings) -> str:
    import csv

    root = settings.serve.photos_root
    assert root is not None
    with open(root / "metadata.csv", newline="") as fh:
        return next(csv.DictReader(fh))["user_id"]


def test_healthz_reports_store_encoder_and_counts(client: TestClient, tiny_encoder: Any) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["ok"] is True
    assert body["encoder_id"] == tiny_encoder.encoder_id
    assert body["users"] == 24 and body["photos"] > 24


def test_recommendations_have_match_fields_gender_age_and_photo_url(client: TestClient, served: Settings) -> None:
    uid = _some_user(served)
    r = client.get(f"/users/{uid}/recommendations", params={"k": 5})
    assert r.status_code == 200, r.text
    rows = r.json()["matches"]
    assert 0 < len(rows) <= 5
    first = rows[0]
    assert set(first) >= {"user_id", "score", "score_a_to_b", "score_b_to_a", "best_photo_id", "rank"}
    assert first["gender"] in ("female", "male", "nonbinary") and isinstance(first["age"], int)
    assert first["best_photo_url"] == f"/photos/{first['best_photo_id']}"
    assert [m["rank"] for m in rows] == list(range(1, len(rows) + 1))
    # Asking for more than exist says how many are compatible.
    big = client.get(f"/users/{uid}/recommendations", params={"k": 1000}).json()
    assert big["note"] == f"only {len(big['matches'])} compatible users"


def test_the_service_counts_impressions_and_starts_a_new_period_each_day(served: Settings, tiny_encoder: Any) -> None:
    """The service passes its ledger to recommend(): with a budget of one impression per day, a user shown
    once goes behind everyone not shown yet, and a new UTC day starts the count again."""
    from datetime import date

    from matcher.service.app import create_app

    def ids(c: TestClient, uid: str) -> list[str]:
        r = c.get(f"/users/{uid}/recommendations", params={"k": 2})
        assert r.status_code == 200, r.text
        return [m["user_id"] for m in r.json()["matches"]]

    # An asker with at least four compatible users (asked of an app of its own, whose ledger is its own).
    import csv

    root = served.serve.photos_root
    assert root is not None
    with open(root / "metadata.csv", newline="") as fh:
        users = list(dict.fromkeys(row["user_id"] for row in csv.DictReader(fh)))
    with TestClient(create_app(served, encoder=tiny_encoder)) as c:
        uid = next(
            u for u in users if len(c.get(f"/users/{u}/recommendations", params={"k": 1000}).json()["matches"]) >= 4
        )
    rs = served.recommend.model_copy(update={"exposure_budget": 1, "explore_slots": 0})
    app = create_app(served.model_copy(update={"recommend": rs}), encoder=tiny_encoder)
    with TestClient(app) as c:
        first = ids(c, uid)
        second = ids(c, uid)
        assert len(first) == len(second) == 2 and not set(first) & set(second)
        app.state.matcher.today = lambda: date(2999, 1, 1)
        assert ids(c, uid) == first


def test_unknown_user_is_404_with_the_cli_message(client: TestClient) -> None:
    r = client.get("/users/nobody-xyz/recommendations")
    assert r.status_code == 404
    assert r.json() == {"error": "user 'nobody-xyz' is not in the store"}
    assert client.get("/users/x/recommendations", params={"k": 0}).status_code == 422


def test_photos_serves_a_thumbnail_from_the_root_only(client: TestClient, served: Settings, tmp_path: Path) -> None:
    uid = _some_user(served)
    user = client.get(f"/users/{uid}").json()
    url = user["photo_urls"][0]
    r = client.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    im = Image.open(io.BytesIO(r.content))
    assert max(im.size) <= served.serve.thumbnail_px
    assert client.get("/photos/00000000-0000-0000-0000-000000000000").status_code == 404


def test_photo_path_outside_the_root_is_refused(served: Settings, tmp_path: Path) -> None:
    from engine.errors import InvalidInput
    from matcher.service.app import thumbnail

    secret = tmp_path / "secret.png"
    Image.new("RGB", (80, 80)).save(secret)
    root = tmp_path / "root"
    root.mkdir()
    (root / "link.png").symlink_to(secret)
    for rel in ("../secret.png", str(secret), "link.png"):
        with pytest.raises(InvalidInput):
            thumbnail(root, rel, served)


def test_embed_returns_the_encoders_vector_and_applies_ingestion_limits(
    client: TestClient, tiny_encoder: Any, demo_dir: Path
) -> None:
    import numpy as np

    path = next(p for p in sorted(demo_dir.rglob("*")) if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    r = client.post("/embed", files={"file": (path.name, path.read_bytes(), "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["encoder_id"] == tiny_encoder.encoder_id and body["dim"] == tiny_encoder.dim
    want = tiny_encoder.embed([Image.open(path).convert("RGB")])[0]
    assert np.allclose(np.array(body["vector"], dtype=np.float32), want, atol=1e-4)
    bad = client.post("/embed", files={"file": ("x.png", b"not an image", "image/png")})
    assert bad.status_code == 400 and "x.png" in bad.json()["error"]
    small = io.BytesIO()
    Image.new("RGB", (8, 8)).save(small, format="PNG")
    r = client.post("/embed", files={"file": ("tiny.png", small.getvalue(), "image/png")})
    assert r.status_code == 400 and "under 64 pixels" in r.json()["error"]


def test_upload_over_the_size_limit_is_refused(served: Settings, tiny_encoder: Any) -> None:
    from matcher.service.app import create_app

    s = served.model_copy(update={"serve": served.serve.model_copy(update={"max_upload_bytes": 100})})
    with TestClient(create_app(s, encoder=tiny_encoder)) as c:
        r = c.post("/embed", files={"file": ("big.png", b"x" * 101, "image/png")})
    assert r.status_code == 400 and "over the limit of 100 bytes" in r.json()["error"]


def test_api_key_guards_every_route_but_healthz(served: Settings, caplog: pytest.LogCaptureFixture) -> None:
    from matcher.service.app import create_app

    key = "s3cret-key-value"
    s = served.model_copy(update={"serve": served.serve.model_copy(update={"api_key": SecretStr(key)})})
    uid = _some_user(served)
    with caplog.at_level("DEBUG"), TestClient(create_app(s)) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get(f"/users/{uid}/recommendations").status_code == 401
        assert c.get(f"/users/{uid}/recommendations", headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get(f"/users/{uid}/recommendations", headers={"X-API-Key": key}).status_code == 200
    assert key not in caplog.text


def test_feedback_is_recorded_once_and_bad_events_name_the_field(client: TestClient, served: Settings) -> None:
    import csv

    root = served.serve.photos_root
    assert root is not None
    with open(root / "metadata.csv", newline="") as fh:
        ids = sorted({row["user_id"] for row in csv.DictReader(fh)})
    like = {"events": [{"viewer_id": ids[0], "candidate_id": ids[1], "decision": "like", "ts": 10}]}
    first = client.post("/feedback", json=like)
    assert first.status_code == 200, first.text
    assert first.json()["added"] == 1
    again = client.post("/feedback", json=like).json()
    assert again["added"] == 0 and again["unchanged"] == 1
    bad = client.post("/feedback", json={"events": [{"viewer_id": ids[0], "candidate_id": ids[1], "decision": "meh"}]})
    assert bad.status_code == 400 and bad.json()["error"].startswith("events[0]: decision 'meh'")
    ghost = {"events": [{"viewer_id": ids[0], "candidate_id": "ghost", "decision": "like"}]}
    unknown = client.post("/feedback", json=ghost)
    assert unknown.status_code == 404 and "ghost" in unknown.json()["error"]


def test_openapi_docs_list_the_routes(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/healthz", "/users/{user_id}/recommendations", "/feedback", "/embed", "/photos/{point_id}"} <= set(paths)


def test_matcher_serve_answers_on_a_loopback_port(served: Settings, live_server: str) -> None:
    """A real uvicorn process (``matcher serve``) over the same store, asked over HTTP."""
    import httpx

    body = httpx.get(f"{live_server}/healthz", timeout=10).json()
    assert body["ok"] is True and body["users"] == 24
    uid = _some_user(served)
    r = httpx.get(f"{live_server}/users/{uid}/recommendations?k=3", timeout=30)
    assert r.status_code == 200
    rows = r.json()["matches"]
    assert rows and [m["rank"] for m in rows] == list(range(1, len(rows) + 1))
    thumb = httpx.get(f"{live_server}{rows[0]['best_photo_url']}", timeout=30)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"


def test_user_list_neighbours_and_a_second_strategy(client: TestClient, served: Settings) -> None:
    users = client.get("/users").json()["users"]
    assert len(users) == 24 and [u["user_id"] for u in users] == sorted(u["user_id"] for u in users)
    uid = _some_user(served)
    photo = client.get(f"/users/{uid}").json()["photo_ids"][0]
    nb = client.get(f"/photos/{photo}/neighbours", params={"k": 5}).json()
    assert nb["user_id"] == uid and len(nb["neighbours"]) == 5
    assert photo not in [n["point_id"] for n in nb["neighbours"]]
    scores = [n["score"] for n in nb["neighbours"]]
    assert scores == sorted(scores, reverse=True) and all(n["user_id"] for n in nb["neighbours"])
    a = client.get(f"/users/{uid}/recommendations", params={"k": 5, "aggregation": "harmonic"}).json()
    b = client.get(f"/users/{uid}/recommendations", params={"k": 5, "aggregation": "min"}).json()
    assert (a["aggregation"], b["aggregation"]) == ("harmonic", "min")
    for m in b["matches"]:
        assert m["score"] == pytest.approx(min(m["score_a_to_b"], m["score_b_to_a"]), abs=1e-6)
    assert client.get("/review").status_code == 200 and "Match review" in client.get("/review").text


def test_start_up_warms_the_serving_copies_unless_told_not_to(served: Settings, tiny_encoder: Any) -> None:
    """``serve.warm`` (default on): start-up fills the copies recommend() serves from (engine.ranking.warm), so a
    user's first call reads nothing one by one; off, nothing is filled before the first request."""
    from matcher.service.app import create_app

    with TestClient(create_app(served, encoder=tiny_encoder)) as c:
        warmed = c.app.state.matcher.warmed  # type: ignore[attr-defined]
        assert len(warmed) == 1 and warmed[0].users == 24  # every stored user, read in bulk
        assert c.get(f"/users/{_some_user(served)}/recommendations").status_code == 200
    cold = served.model_copy(update={"serve": served.serve.model_copy(update={"warm": False})})
    with TestClient(create_app(cold, encoder=tiny_encoder)) as c:
        assert c.app.state.matcher.warmed == []  # type: ignore[attr-defined]
