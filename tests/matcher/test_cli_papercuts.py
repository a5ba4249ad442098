"""The CLI's rough edges a newcomer meets, each reproduced as they would: a mistyped store path, global flags
after the command, ``--exclude`` before the user id, help texts. Real embedded stores, the real parser."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.errors import StoreNotFound
from engine.recommend import recommend
from engine.schema import PHOTOS, USERS, photo_point_id, user_point_id
from engine.settings import Settings
from engine.store import open_store
from engine.store.base import Point
from matcher.cli import build_parser, main

DIM = 8


@pytest.fixture(autouse=True)
def _plain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MATCHER_QDRANT_URL", "MATCHER_STORE_BACKEND", "MATCHER_STORE_PATH", "MATCHER_COLLECTION_PREFIX"):
        monkeypatch.delenv(name, raising=False)


def make_store(path: Path, backend: str = "edge") -> Path:
    """Four users, two photos each: ann (female, 30) seeks men; bob, carl, dan (men) seek women."""
    people = [
        ("ann", "female", 30, ["male"]),
        ("bob", "male", 31, ["female"]),
        ("carl", "male", 33, ["female"]),
        ("dan", "male", 35, ["female"]),
    ]
    e = np.eye(DIM, dtype=np.float32)
    with open_store(Settings(store_path=path, store_backend=backend, progress=False)) as store:  # type: ignore[arg-type]
        store.setup("enc-cli", DIM)
        photos, users = [], []
        for i, (uid, gender, age, seeking) in enumerate(people):
            vec = (e[0] + 0.3 * e[i + 1]) / np.linalg.norm(e[0] + 0.3 * e[i + 1])
            pids = [photo_point_id(uid, f"sha{j}") for j in range(2)]
            base = {"user_id": uid, "gender": gender, "age": age, "encoder_id": "enc-cli"}
            photos += [
                Point(pid, vec.astype(np.float32), {**base, "source_path": f"{uid}/{uid}_{j}.jpg"})
                for j, pid in enumerate(pids)
            ]
            users.append(
                Point(
                    user_point_id(uid),
                    vec.astype(np.float32),
                    {**base, "seeking": seeking, "age_min": 18, "age_max": 99, "n_photos": 2, "photo_ids": pids},
                )
            )
        store.upsert(PHOTOS, photos)
        store.upsert(USERS, users)
    return path


# -- 1. a reading command on a missing store says so and leaves nothing behind ------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["stats"],
        ["stats", "--json"],
        ["recommend", "ann"],
        ["delete-user", "ann"],
        ["replay", "LOG.csv"],
        ["feedback", "LOG.csv"],
        ["serve"],
        ["refresh"],
        ["rebuild-model"],
    ],
    ids=lambda a: a[0] + ("-json" if "--json" in a else ""),
)
@pytest.mark.parametrize("backend", ["edge", "local"])
def test_reading_commands_do_not_create_a_missing_store(
    argv: list[str], backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "mistyped" / "qdrant"
    if argv[0] in ("replay", "feedback"):
        (tmp_path / "LOG.csv").write_text("viewer_id,candidate_id,decision,ts\nann,bob,like,1\n", encoding="utf-8")
        argv = [argv[0], str(tmp_path / "LOG.csv")]
    if argv[0] == "serve":
        uvicorn = pytest.importorskip("uvicorn")

        def never(*args: object, **kwargs: object) -> None:
            raise AssertionError("the server was started on a store that does not exist")

        monkeypatch.setattr(uvicorn, "run", never)
    code = main(["--store", str(missing), "--backend", backend, *argv])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert not missing.exists() and not missing.parent.exists()
    assert f"matcher {argv[0]}: error: no store at {missing}: the folder does not exist" in err
    assert "empty" not in out


def test_a_file_in_place_of_the_store_folder_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "store"
    path.write_text("not a store", encoding="utf-8")
    assert main(["--store", str(path), "stats"]) == 2
    assert f"no store at {path}: the folder is not a folder" in capsys.readouterr().err


def test_recommend_api_on_a_missing_store_raises_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(StoreNotFound, match="does not exist"):
        recommend("ann", settings=Settings(store_path=missing, progress=False))
    assert not missing.exists()


def test_an_existing_empty_folder_is_still_an_empty_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "fresh").mkdir()
    assert main(["--store", str(tmp_path / "fresh"), "stats"]) == 0
    assert "empty (nothing ingested yet)" in capsys.readouterr().out


def test_open_store_still_makes_a_store_for_writers(tmp_path: Path) -> None:
    with open_store(Settings(store_path=tmp_path / "new", progress=False)) as store:
        store.setup("enc", DIM)
    assert (tmp_path / "new").is_dir()


# -- 2. global flags after the command; --exclude before the user id ----------------------------------------
@pytest.mark.parametrize("backend", ["edge", "local"])
def test_global_flags_work_after_the_command(backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_store(tmp_path / "store", backend)
    assert main(["stats", "--json", "--store", str(path), "--backend", backend, "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["users"] == 4
    assert main(["recommend", "ann", "--store", str(path), "--backend", backend, "--json"]) == 0
    assert {m["user_id"] for m in json.loads(capsys.readouterr().out)} == {"bob", "carl", "dan"}


def test_flags_before_the_command_are_kept_when_not_repeated_after() -> None:
    args = build_parser().parse_args(["--store", "X", "--backend", "edge", "--no-progress", "-vv", "stats"])
    assert (args.store, args.backend, args.no_progress, args.verbose) == ("X", "edge", True, 2)
    args = build_parser().parse_args(["stats"])
    assert (args.store, args.backend, args.no_progress, args.verbose) == (None, None, False, 0)
    args = build_parser().parse_args(["--store", "X", "stats", "--store", "Y", "-v"])
    assert (args.store, args.verbose) == ("Y", 1)  # the later flag wins, as for any repeated flag


def test_exclude_before_the_user_id_does_not_swallow_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_store(tmp_path / "store")
    flags = ["--store", str(path)]
    assert main(["recommend", "--exclude", "bob", "carl", "ann", *flags, "--json"]) == 0
    assert [m["user_id"] for m in json.loads(capsys.readouterr().out)] == ["dan"]
    assert main(["recommend", "ann", "--exclude", "bob", "carl", *flags, "--json"]) == 0
    assert [m["user_id"] for m in json.loads(capsys.readouterr().out)] == ["dan"]
    assert main(["recommend", "ann", "--exclude", "bob,dan", *flags, "--json"]) == 0
    assert [m["user_id"] for m in json.loads(capsys.readouterr().out)] == ["carl"]
    assert main(["recommend", *flags]) == 2
    assert "USER_ID" in capsys.readouterr().err


# -- 5. recommend shows who the matches are, and says when fewer are compatible than asked for --------------
def test_recommend_shows_gender_age_and_photo_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_store(tmp_path / "store")
    assert main(["--store", str(path), "recommend", "ann", "--k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "user_id", "gender", "age", "score", "a->b", "b->a", "best_photo"]
    rows = {line.split()[1]: line.split() for line in lines[1:]}
    assert set(rows) == {"bob", "carl", "dan"} and len(lines) == 4  # no "only N" line: 3 asked, 3 found
    for uid, age in (("bob", "31"), ("carl", "33"), ("dan", "35")):
        assert rows[uid][2:4] == ["male", age]
        assert rows[uid][-1] in (f"{uid}/{uid}_0.jpg", f"{uid}/{uid}_1.jpg")

    assert main(["--store", str(path), "recommend", "ann", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert {(m["user_id"], m["gender"], m["age"]) for m in got} == {
        ("bob", "male", 31),
        ("carl", "male", 33),
        ("dan", "male", 35),
    }
    assert all(m["best_photo_path"].startswith(m["user_id"] + "/") for m in got)


def test_recommend_says_when_only_n_users_are_compatible(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_store(tmp_path / "store")
    assert main(["--store", str(path), "recommend", "ann", "--k", "1000"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "only 3 compatible users for ann (asked for 1000)"
    assert main(["--store", str(path), "recommend", "ann", "--k", "1000", "--exclude", "bob", "--json"]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)) == 2
    assert "only 2 compatible users for ann besides the 1 excluded (asked for 1000)" in captured.err


# -- 6. help texts -------------------------------------------------------------------------------------------
def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_top_level_help_has_no_raw_markup(capsys: pytest.CaptureFixture[str]) -> None:
    out = _help([], capsys)
    assert "``" not in out and "`" not in out and "matcher" in out
    assert "before or after the command" in out


@pytest.mark.parametrize("command", ["build-tiny-encoder", "embed", "demo", "train", "recommend", "stats"])
def test_every_command_has_a_description_and_no_markup(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = _help([command], capsys)
    usage_end = out.index("\n\n")
    description = out[usage_end:].split("\n\n")[1]
    assert not description.lstrip().startswith(("positional arguments", "options")), out
    assert len(description.split()) >= 8, description
    assert "`" not in out
    assert "global options" in out and "--store PATH" in out


def test_train_flags_show_their_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    from training.settings import TrainSettings

    text = _help(["train"], capsys)
    out = " ".join(text[text.index("options:") :].split())  # the flag list, argparse's line breaks undone
    d = TrainSettings()
    for flag, shown in [
        ("--epochs EPOCHS", d.epochs),
        ("--p P", d.p),
        ("--k K", d.k),
        ("--lr LR", "0.001"),
        ("--mode {head,last_blocks,lora,full}", d.mode),
        ("--loss LOSSES", "supcon"),
        ("--pixel-budget PIXEL_BUDGET", d.pixel_budget),
        ("--seed SEED", d.seed),
    ]:
        at = out.index(flag)
        nxt = out.index(" --", at + len(flag))
        assert f"(default: {shown})" in out[at:nxt], out[at:nxt]
    assert "(default: by mode: last_blocks 2e-05" in out


def test_train_flags_still_leave_the_config_alone() -> None:
    args = build_parser().parse_args(["train", "d", "--out", "o"])
    assert args.epochs is None and args.lr is None and args.losses is None
