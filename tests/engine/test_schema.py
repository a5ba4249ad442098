"""One schema: the payload field names, the typed payload model and the profile agree, and every package
that writes or reads a users point goes through them."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from engine.errors import InvalidInput
from engine.schema import (
    PHOTO_FIELDS,
    PHOTO_IDS,
    USER_FIELDS,
    PhotoPayload,
    Profile,
    UserPayload,
    photo_ids_of,
    photo_payload,
    usable_vector,
    user_payload,
    window_of,
    window_value,
)
from engine.store.base import Point

ROOT = Path(__file__).resolve().parents[2]
ALICE = Profile("alice", "female", 30, ("male",), 25, 40)


def test_payload_model_and_field_names_agree() -> None:
    assert tuple(UserPayload.__annotations__) == USER_FIELDS
    assert tuple(PhotoPayload.__annotations__) == PHOTO_FIELDS
    written = user_payload(ALICE, ["p2", "p1"], "enc")
    assert tuple(written) == USER_FIELDS and written["n_photos"] == 2 and written["seeking"] == ["male"]
    assert tuple(photo_payload(ALICE, "ab" * 32, "alice/1.jpg", "enc")) == PHOTO_FIELDS


def test_profile_round_trips_through_its_payload() -> None:
    payload = dict(user_payload(ALICE, ["p1"], "enc"))
    assert Profile.from_payload(payload) == ALICE
    assert photo_ids_of(payload) == ["p1"] and photo_ids_of(None) == [] and photo_ids_of({}) == []
    del payload["age_max"]
    with pytest.raises(InvalidInput, match="'age_max' is missing"):
        Profile.from_payload(payload, where="users point x")


def test_ingestion_record_is_a_profile() -> None:
    from ingestion.records import UserRecord

    record = UserRecord("alice", "female", 30, ("male",), 25, 40, row=7)
    assert isinstance(record, Profile) and record.same_profile(ALICE) and record.fields() == ALICE.fields()


def test_usable_vector_refuses_empty_zero_and_nan() -> None:
    assert usable_vector(Point(id="a", vector=None)) is None
    assert usable_vector(Point(id="a", vector=np.zeros(4, np.float32))) is None
    assert usable_vector(Point(id="a", vector=np.array([1, np.nan], np.float32))) is None
    got = usable_vector(Point(id="a", vector=[0.6, 0.8]))
    assert got is not None and got.dtype == np.float32


@pytest.mark.parametrize("package", ["engine", "ingestion", "matcher"])
def test_photo_ids_is_named_only_in_the_schema(package: str) -> None:
    """The users point's field names are spelled once, in engine/schema.py (the bare string drifted before)."""
    bare = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if path == ROOT / "engine" / "schema.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in (PHOTO_IDS, "photo_sha256", "n_photos", "kth_sim"):
                bare.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not bare, bare


def test_kth_top_is_stored_as_one_exact_string_and_old_lists_still_read() -> None:
    rng = np.random.default_rng(3)
    windows = [
        [float(x) for x in np.sort(rng.random(8).astype(np.float32))[::-1]],  # what the passes write
        sorted(rng.uniform(-1, 1, 5).tolist(), reverse=True),  # any float64
        [-0.25],
        [],
    ]
    for w in windows:
        stored = window_value(w)
        assert isinstance(stored, str)
        assert window_of(stored) == w  # exact: shortest round-trip reprs
        assert window_of(w) == w  # the list form earlier passes wrote
    assert window_value([np.float64(0.5), np.float32(0.25)]) == "0.5,0.25"
    assert window_of([1, 0.5]) == [1.0, 0.5]
    for bad in (None, "0.5,x", "0.5,nan", "inf", [True, 0.5], ["0.5"], {"a": 1}, 0.5):
        assert window_of(bad) is None, bad
