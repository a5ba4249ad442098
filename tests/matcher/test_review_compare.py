"""Two encoders side by side: ``matcher serve --compare-store`` opens a second store of the same photos made
with another encoder (e.g. the untrained one), every review route takes ``?store=compare``, and the review
page shows either store in either column, with a neighbour view in the store of the column clicked."""

from __future__ import annotations

import csv
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed (pip install -e '.[serve]')")
pytest.importorskip("httpx", reason="httpx (FastAPI's TestClient) is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from engine.settings import Settings  # noqa: E402
from tests.matcher.browser import ARTIFACTS, needs_browser, open_review_page  # noqa: E402


@pytest.fixture(scope="module")
def other_encoder(tiny_checkpoint: Path) -> Any:
    """The tiny tower with a 16-d head: another encoder id, other vectors (plays 'untrained vs trained')."""
    from training.encoder import load_encoder

    return load_encoder(tiny_checkpoint, device="cpu", dtype="float32", pixel_budget=64 * 64, dim=16)


@pytest.fixture(scope="module")
def paired(served: Settings, demo_dir: Path, other_encoder: Any, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """``served`` with a compare store: the same demo photos ingested with ``other_encoder``."""
    from ingestion.job import run_ingest

    compare = served.model_copy(update={"store_path": tmp_path_factory.mktemp("compare") / "qdrant"})
    report = run_ingest(demo_dir, demo_dir / "metadata.csv", settings=compare, encoder=other_encoder)
    assert report.counts.users_written > 0
    return served.model_copy(
        update={"serve": served.serve.model_copy(update={"compare_store_path": compare.store_path})}
    )


@pytest.fixture
def client(paired: Settings, tiny_encoder: Any) -> Iterator[TestClient]:
    from matcher.service.app import create_app

    with TestClient(create_app(paired, encoder=tiny_encoder)) as c:
        yield c


def first_user(settings: Settings) -> str:
    root = settings.serve.photos_root
    assert root is not None
    with open(root / "metadata.csv", newline="") as fh:
        return next(csv.DictReader(fh))["user_id"]


def test_healthz_names_both_encoders(client: TestClient, tiny_encoder: Any, other_encoder: Any) -> None:
    body = client.get("/healthz").json()
    assert body["encoder_id"] == tiny_encoder.encoder_id
    assert body["compare"]["encoder_id"] == other_encoder.encoder_id != tiny_encoder.encoder_id
    assert body["compare"]["users"] == body["users"]


def test_recommendations_and_neighbours_come_from_the_store_asked_for(client: TestClient, paired: Settings) -> None:
    uid = first_user(paired)
    main = client.get(f"/users/{uid}/recommendations", params={"k": 5}).json()
    other = client.get(f"/users/{uid}/recommendations", params={"k": 5, "store": "compare"}).json()
    assert (main["store"], other["store"]) == ("main", "compare")
    assert main["matches"] and other["matches"]
    assert [m["score"] for m in main["matches"]] != [m["score"] for m in other["matches"]]
    photo = other["matches"][0]["best_photo_id"]
    r = client.get(f"/photos/{photo}", params={"store": "compare"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    nb_main = client.get(f"/photos/{photo}/neighbours", params={"k": 4}).json()
    nb_other = client.get(f"/photos/{photo}/neighbours", params={"k": 4, "store": "compare"}).json()
    assert nb_other["store"] == "compare" and len(nb_other["neighbours"]) == 4
    assert all(n["user_id"] for n in nb_other["neighbours"])
    assert [n["score"] for n in nb_main["neighbours"]] != [n["score"] for n in nb_other["neighbours"]]
    user = client.get(f"/users/{uid}", params={"store": "compare"}).json()
    assert user["user_id"] == uid and user["photo_urls"]


def test_store_compare_without_a_compare_store_is_a_clear_400(served: Settings, tiny_encoder: Any) -> None:
    from matcher.service.app import create_app

    with TestClient(create_app(served, encoder=tiny_encoder)) as c:
        assert c.get("/healthz").json()["compare"] is None
        r = c.get(f"/users/{first_user(served)}/recommendations", params={"store": "compare"})
    assert r.status_code == 400
    assert "no compare store is open (start matcher serve with --compare-store PATH" in r.json()["error"]


def test_serve_refuses_a_missing_compare_store(
    served: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    from matcher.cli import main

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server was started"))
    missing = tmp_path / "untrained-store"
    assert main(["serve", "--store", str(served.store_path), "--compare-store", str(missing)]) == 2
    assert f"no store at {missing}: the folder does not exist" in capsys.readouterr().err
    assert not missing.exists()


@pytest.fixture(scope="module")
def live_pair(paired: Settings, start_server: Callable[..., AbstractContextManager[str]]) -> Iterator[str]:
    """``matcher serve --compare-store`` as a real uvicorn process (one per module); yields its base URL."""
    with start_server(paired.store_path, "--photos", str(paired.serve.photos_root),
                      "--compare-store", str(paired.serve.compare_store_path)) as base:  # fmt: skip
        yield base


def test_a_live_server_serves_both_stores(live_pair: str, paired: Settings, other_encoder: Any) -> None:
    import httpx

    assert httpx.get(f"{live_pair}/healthz").json()["compare"]["encoder_id"] == other_encoder.encoder_id
    r = httpx.get(f"{live_pair}/users/{first_user(paired)}/recommendations", params={"store": "compare"})
    assert r.status_code == 200 and r.json()["matches"]


@needs_browser
def test_review_page_shows_two_encoders_side_by_side(live_pair: str, paired: Settings, other_encoder: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    uid = first_user(paired)
    with open_review_page(f"{live_pair}/review?user={uid}", 1400) as driver:
        # Column B starts on the compare store: untrained vs trained at a glance.
        assert Select(driver.find_element(By.ID, "view-b")).first_selected_option.get_attribute("value") == (
            "compare|harmonic"
        )
        driver.find_element(By.ID, "compare").click()
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#matches-b .match"))
        assert other_encoder.encoder_id in driver.find_element(By.ID, "encoder-b").text
        assert driver.find_element(By.ID, "matches-b").get_attribute("data-store") == "compare"
        photo_b = driver.find_element(By.CSS_SELECTOR, "#matches-b .match img")
        assert driver.execute_script("return arguments[0].naturalWidth", photo_b) > 0
        # Neighbour view in the compare store: click column B's first best photo.
        photo_b.click()
        WebDriverWait(driver, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#neighbours .nb")) > 1)
        assert driver.find_element(By.ID, "neighbours").get_attribute("data-store") == "compare"
        owners = [e.get_attribute("data-user-id") for e in driver.find_elements(By.CSS_SELECTOR, "#neighbours .nb")]
        assert all(owners[1:])
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "review-page-compare.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 1000


NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="no Node.js here to run the page's script without a browser")
def test_review_page_script_drives_both_stores_without_a_browser(
    live_pair: str, paired: Settings, other_encoder: Any
) -> None:
    """The page's own JS under Node with a minimal DOM (the browser test above needs Chromium)."""
    import json

    page = Path(__file__).resolve().parents[2] / "matcher" / "service" / "static" / "review.html"
    uid = first_user(paired)
    smoke = Path(__file__).with_name("review_page_smoke.mjs")
    done = subprocess.run([str(NODE), str(smoke), live_pair, str(page), uid], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["ready"] == "1" and got["status"] == "" and got["who"].startswith(uid)
    assert got["own_photos"] > 0 and got["matches_a"] and uid not in got["matches_a"]
    assert got["view_b"] == "compare|harmonic" and "main|min" in got["views_b"]
    assert got["column_b_hidden"] is False and got["store_b"] == "compare"
    assert other_encoder.encoder_id in got["encoder_b"] and got["matches_b"]
    assert got["photo_b_src"].endswith("?store=compare") and got["photo_b_status"] == 200
    assert got["photo_b_type"] == "image/jpeg"
    owners = got["neighbour_owners"]  # the query photo first, then its neighbours with their owners
    assert got["neighbour_store"] == "compare" and len(owners) > 1 and all(owners[1:])
    assert any("recommendations" in r and "store=compare" in r for r in got["requests"])
    assert any("/neighbours" in r and "store=compare" in r for r in got["requests"])
