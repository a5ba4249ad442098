"""Crash safety and single-writer locking of the embedded Edge store, with real processes.

A child process upserts batches and prints each batch number once ``upsert`` returned (flushed to the pipe);
the test SIGKILLs it mid-way, reopens the folder and checks that every acknowledged point is there, intact.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import qdrant_edge as qe

from engine.errors import StoreLocked
from engine.schema import USERS
from engine.settings import Settings
from engine.store import Point, Query
from engine.store.client import QdrantClientStore
from engine.store.edge import EdgeStore

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL semantics are POSIX")

DIM = 16
BATCH = 50
NS = uuid.UUID("0d7c8b1e-54a3-4c6e-9f1a-7e2b3c4d5e6f")

WRITER = textwrap.dedent(
    """
    import sys, uuid
    import numpy as np
    from engine.schema import USERS
    from engine.settings import Settings
    from engine.store import Point, open_store

    path, first = sys.argv[1], int(sys.argv[2])
    ns = uuid.UUID("{ns}")
    store = open_store(Settings(store_path=path, store_backend="edge"))
    store.setup("enc-crash", {dim})
    print("ready", flush=True)
    for b in range(first, first + 100000):
        rng = np.random.default_rng(b)
        v = rng.normal(size=({batch}, {dim})).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        store.upsert(USERS, [
            Point(str(uuid.uuid5(ns, f"{{b}}:{{j}}")), v[j], {{"batch": b, "j": j, "tag": "ü" * (j % 3)}})
            for j in range({batch})
        ])
        print(b, flush=True)  # acknowledged: upsert returned
    """
).format(ns=NS, dim=DIM, batch=BATCH)

HOLDER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from engine.schema import USERS
    from engine.settings import Settings
    from engine.store import Point, open_store

    store = open_store(Settings(store_path=sys.argv[1], store_backend="edge"))
    store.setup("enc-lock", {dim})
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "write":
            v = np.eye({dim}, dtype=np.float32)[0]
            store.upsert(USERS, [Point("6f1c2d3e-0000-4000-8000-000000000001", v, {{"by": "holder"}})])
            print("count", store.count(USERS), flush=True)
        elif line.strip() == "quit":
            break
    store.close()
    print("closed", flush=True)
    """
).format(dim=DIM)


def _spawn(script: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )


def _expected_vector(b: int, j: int) -> np.ndarray:
    v = np.random.default_rng(b).normal(size=(BATCH, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v[j]


def _kill_after(path: Path, first: int, acks_wanted: int) -> list[int]:
    """Run the writer from batch ``first``, SIGKILL it after ``acks_wanted`` acks; every acked batch."""
    child = _spawn(WRITER, str(path), str(first))
    assert child.stdout is not None
    try:
        line = child.stdout.readline().strip()
        if line != "ready":
            raise AssertionError(
                f"writer did not start: {line!r} {child.stderr.read() if child.stderr else ''}"
            )
        acked: list[int] = []
        while len(acked) < acks_wanted:
            line = child.stdout.readline()
            if not line:
                raise AssertionError(f"writer died: {child.stderr.read() if child.stderr else ''}")
            acked.append(int(line))
        child.send_signal(signal.SIGKILL)  # mid-way: it is inside the next upsert or about to be
        rest, _ = child.communicate(timeout=30)
        acked += [int(x) for x in rest.split()]  # acks already in the pipe when it died
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    return acked


def test_acknowledged_upserts_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "store"
    acked = _kill_after(path, 0, 12)
    acked += _kill_after(path, 1000, 6)  # a second crash on top of a replayed WAL

    store = EdgeStore.open(Settings(store_path=path, store_backend="edge"))
    try:
        info = store.info()
        assert info is not None and info.encoder_id == "enc-crash"
        ids = [str(uuid.uuid5(NS, f"{b}:{j}")) for b in acked for j in range(BATCH)]
        got = {p.id: p for p in store.retrieve(USERS, ids, with_vectors=True)}
        missing = sorted(set(ids) - set(got))
        assert not missing, f"{len(missing)} acknowledged points lost, e.g. {missing[:3]}"
        # Whole batches only: a batch is one WAL record, so a killed upsert leaves all of it or none.
        n = store.count(USERS)
        assert n % BATCH == 0 and n >= len(ids)
        for b in (acked[0], acked[-1]):
            p = got[str(uuid.uuid5(NS, f"{b}:7"))]
            assert p.payload == {"batch": b, "j": 7, "tag": "ü"}
            assert p.vector is not None
            np.testing.assert_allclose(p.vector, _expected_vector(b, 7), atol=1e-6)
        hit = store.query(USERS, Query(_expected_vector(acked[3], 2), 1))
        assert hit[0].id == str(uuid.uuid5(NS, f"{acked[3]}:2"))
        # Still writable and optimisable after the crashes.
        store.upsert(USERS, [Point(str(uuid.uuid4()), _expected_vector(0, 0), {"batch": -1})])
        store.optimize()
        assert store.count(USERS) == n + 1
    finally:
        store.close()


def test_second_process_gets_store_locked_and_first_keeps_working(tmp_path: Path) -> None:
    path = tmp_path / "store"
    holder = _spawn(HOLDER, str(path))
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLocked) as err:
            EdgeStore.open(Settings(store_path=path, store_backend="edge"))
        assert str(path) in str(err.value) and "in use" in str(err.value)
        with pytest.raises(StoreLocked, match="in use"):  # the qdrant-client local backend too
            QdrantClientStore.embedded(Settings(store_path=path, store_backend="local"))

        holder.stdin.write("write\n")
        holder.stdin.flush()
        assert holder.stdout.readline().split() == ["count", "1"]  # the first one keeps working
        holder.stdin.write("quit\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "closed"
        assert holder.wait(timeout=30) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    with EdgeStore.open(Settings(store_path=path, store_backend="edge")) as store:  # free again
        assert [p.payload for p in store.scroll(USERS)] == [{"by": "holder"}]


def test_second_open_in_the_same_process_is_locked_until_closed(tmp_path: Path) -> None:
    settings = Settings(store_path=tmp_path / "store", store_backend="edge")
    first = EdgeStore.open(settings)
    first.setup("enc", DIM)
    with pytest.raises(StoreLocked):
        EdgeStore.open(settings)
    first.close()
    with EdgeStore.open(settings) as again:
        assert again.info() is not None


def test_a_shard_held_outside_our_lock_is_reported_as_locked(tmp_path: Path) -> None:
    """If something opened a shard without taking our folder lock, Edge's WAL lock still ends as
    ``StoreLocked`` naming the shard folder, not as a crash."""
    settings = Settings(store_path=tmp_path / "store", store_backend="edge")
    with EdgeStore.open(settings) as s:
        s.setup("enc", DIM)
    raw = qe.EdgeShard.load(str(tmp_path / "store" / USERS))
    try:
        with pytest.raises(StoreLocked) as err:
            EdgeStore.open(settings)
        assert str(tmp_path / "store" / USERS) in str(err.value)
    finally:
        raw.close()
    with EdgeStore.open(settings) as s:  # and the folder lock was released by the failed open
        assert s.count(USERS) == 0
