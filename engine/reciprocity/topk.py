"""Exact top-K similarities over compatible users, by brute force in numpy: the computation behind the
reciprocity statistics (``engine.reciprocity``), apart from the store bookkeeping.

Users sharing (gender, seeking, age, age window) share every compatibility constraint
(``engine.compatibility``), so they form a *group* with one compatible pool: :class:`Groups` holds the
profiles' attributes as arrays (genders as bits), and :func:`compatible_topk` scores each group with one
matrix product against exactly its pool (few-row groups, as in an incremental pass, go in age-sorted blocks
against one contiguous slice of vectors). The work is ``rows x pool x dim`` multiply-adds.
:func:`exact_kth` is the plain all-pairs reference it is tested against.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from engine.errors import InvalidInput
from engine.schema import Profile

NO_KTH = -1.0  # kth_sim of a user with fewer than K compatible users
_BLOCK_ENTRIES = 1 << 24  # similarities per block in compatible_topk (64 MB of float32)
_SMALL_GROUP = 64  # groups of at most this many rows are scored in (gender, age) blocks (_topk_in_age_blocks)
_AGE_BLOCK = 64  # rows per product there, at most
_AGE_SPAN = 4  # ... whose ages differ by at most this many years


def gender_bits(profiles: Sequence[Profile]) -> dict[str, int]:
    """A bit (1 << index) per gender seen in the profiles, as someone's gender or in what they seek."""
    genders = sorted({p.gender for p in profiles} | {s for p in profiles for s in p.seeking})
    if len(genders) > 62:
        raise InvalidInput(f"profiles: {len(genders)} distinct genders; at most 62 are supported")
    return {g: 1 << i for i, g in enumerate(genders)}


class Groups:
    """Profiles' compatibility attributes as arrays (genders as bits of ``bit``), and the compatible pool
    of a group. Users sharing (gender, seeking, age, age window) share every constraint, so a group has one
    pool: candidates sorted by age make the group's window one slice, then both sides' other tests are masks.
    """

    def __init__(self, gender: np.ndarray, seeks: np.ndarray, age: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        """(n,) int64 arrays: gender bit, seeking mask (bits of the genders sought), age, age window."""
        self.gender, self.seeks = np.asarray(gender, np.int64), np.asarray(seeks, np.int64)
        self.age, self.lo, self.hi = (np.asarray(x, np.int64) for x in (age, lo, hi))
        self.by_age = np.argsort(self.age, kind="stable")
        self.age_sorted = self.age[self.by_age]

    @classmethod
    def of(cls, profiles: Sequence[Profile], bit: dict[str, int] | None = None) -> Groups:
        """From profiles, genders numbered by ``bit`` (default: :func:`gender_bits` of the profiles)."""
        bit = bit if bit is not None else gender_bits(profiles)
        return cls(
            np.array([bit[p.gender] for p in profiles], dtype=np.int64),
            np.array([sum(bit[s] for s in set(p.seeking)) for p in profiles], dtype=np.int64),
            np.array([p.age for p in profiles], dtype=np.int64),
            np.array([p.age_min for p in profiles], dtype=np.int64),
            np.array([p.age_max for p in profiles], dtype=np.int64),
        )

    def __len__(self) -> int:
        return len(self.age)

    def window(self, g: int, want: int, a: int, lo: int, hi: int) -> tuple[int, int, np.ndarray]:
        """The slice ``[left, right)`` of ``by_age`` inside the age window [lo, hi], and which of its rows are
        compatible with a user of gender bit ``g``, seeking mask ``want`` and age ``a`` (bool mask)."""
        left, right = (int(x) for x in np.searchsorted(self.age_sorted, [lo, hi + 1]))
        p = self.by_age[left:right]
        ok = ((self.gender[p] & want) != 0) & ((self.seeks[p] & g) != 0) & (self.lo[p] <= a) & (self.hi[p] >= a)
        return left, right, ok

    def pool(self, g: int, want: int, a: int, lo: int, hi: int) -> np.ndarray:
        """Rows compatible with such a user (the user themselves included when they are among the rows and
        self-compatible)."""
        left, right, ok = self.window(g, want, a, lo, hi)
        return self.by_age[left:right][ok]

    def groups(self, sel: np.ndarray) -> Iterator[tuple[np.ndarray, tuple[int, int, int, int, int]]]:
        """The rows ``sel`` split into groups: (positions in ``sel``, the group's key)."""
        keys = np.stack([self.gender[sel], self.seeks[sel], self.age[sel], self.lo[sel], self.hi[sel]], axis=1)
        order = np.lexsort(keys.T[::-1])
        keys = keys[order]
        starts = np.flatnonzero(np.r_[True, np.any(keys[1:] != keys[:-1], axis=1)])
        for s, e in zip(starts, np.r_[starts[1:], len(sel)], strict=True):
            g, want, a, lo, hi = (int(x) for x in keys[s])
            yield order[s:e], (g, want, a, lo, hi)


def against(grp: Groups, receivers: np.ndarray, others: Groups) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """For each group of ``receivers`` (rows of ``grp``): (its rows, the rows of ``others`` compatible with
    it), skipping groups nobody in ``others`` is compatible with. One matrix product per pair then scores a
    whole group against the changed users."""
    if len(receivers) == 0:
        return
    for at, key in grp.groups(receivers):
        pool = others.pool(*key)
        if len(pool):
            yield receivers[at], pool


def compatible_topk(
    vectors: np.ndarray,
    profiles: Sequence[Profile] | Groups,
    k: int,
    *,
    rows: np.ndarray | Sequence[int] | None = None,
    queries: dict[int, np.ndarray] | np.ndarray | None = None,
    block: int = 2048,
    progress: bool = False,
) -> np.ndarray:
    """The K best similarities of each user over their compatible users, by exact brute force.

    ``vectors`` (n, d) float32 unit rows (the users' mean vectors, what candidates are judged by);
    ``profiles`` aligned with them (or their :class:`Groups`); ``rows``: the users to score (default:
    all); ``queries``: row -> (d,) unit vector ranking that user's list instead of their own vector (their
    taste, ``engine.likes``), or an (n, d) matrix of every user's query. Returns (len(rows), k) float32,
    best first, ``-inf`` where a user has fewer than K compatible users (never themselves). Each
    group of rows sharing (gender, seeking, age, age window) is one matrix product against exactly its
    compatible users; ``block`` caps the rows per product.
    """
    n = len(profiles)
    if vectors.shape[0] != n:
        raise InvalidInput(f"vectors: {vectors.shape[0]} rows for {n} profiles")
    if k < 1 or block < 1:
        raise InvalidInput(f"k and block must be positive, got k={k}, block={block}")
    sel = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    out = np.full((len(sel), k), -np.inf, dtype=np.float32)
    if len(sel) == 0:
        return out
    queries = queries if queries is not None else {}
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    grp = profiles if isinstance(profiles, Groups) else Groups.of(profiles)
    slot = np.full(n, -1, dtype=np.int64)
    small: list[np.ndarray] = []
    bar = tqdm(total=len(sel), desc="reciprocity", unit="user", disable=not progress)
    for at, (g, want, a, lo_g, hi_g) in grp.groups(sel):  # at: positions in ``sel`` / ``out``
        members = sel[at]
        # Members share every attribute: either all of them are in the pool (self-compatible) or none.
        self_in = (g & want) != 0 and lo_g <= a <= hi_g
        if len(at) <= _SMALL_GROUP:
            small.append(at)  # scored below, with other few-row groups of similar age
            continue
        pool = grp.pool(g, want, a, lo_g, hi_g)
        if len(pool) - int(self_in) <= 0:
            bar.update(len(at))
            continue  # nobody compatible
        pool_vecs = vectors[pool]
        if self_in:
            slot[pool] = np.arange(len(pool))  # where each member sits in the pool
        step = max(1, min(block, _BLOCK_ENTRIES // len(pool)))
        width = min(k, len(pool))
        for b in range(0, len(at), step):
            pos, r = at[b : b + step], members[b : b + step]
            q = _rows_of(queries, r) if isinstance(queries, np.ndarray) else vectors[r]
            if isinstance(queries, dict) and queries:
                for j, row in enumerate(r):
                    t = queries.get(int(row))
                    if t is not None:
                        q[j] = t
            sims = q @ pool_vecs.T  # (rows, pool) float32
            if self_in:
                sims[np.arange(len(r)), slot[r]] = -np.inf  # never oneself
            if width < len(pool):
                sims = np.partition(sims, len(pool) - width, axis=1)[:, len(pool) - width :]
            out[pos, :width] = -np.sort(-sims, axis=1)
        if self_in:
            slot[pool] = -1
        bar.update(len(at))
    if small:
        _topk_in_age_blocks(vectors, grp, sel, np.concatenate(small), queries, k, out)
        bar.update(sum(len(at) for at in small))
    bar.close()
    return out


def _topk_in_age_blocks(
    vectors: np.ndarray,
    grp: Groups,
    sel: np.ndarray,
    at: np.ndarray,
    queries: dict[int, np.ndarray] | np.ndarray,
    k: int,
    out: np.ndarray,
) -> None:
    """``out[at]`` for rows ``sel[at]`` from groups too small to be worth copying their pool (an incremental
    pass: a few rows per group). Candidates are ordered by (gender, age), so the users of one gender in an age
    range are one contiguous slice; rows sorted by (genders sought, age) go in blocks of ``_AGE_BLOCK``, each
    one matrix product against the slices of the genders it seeks over the ages its windows span, with the
    other compatibility tests as a mask. The vectors are read once per block instead of once per group."""
    n = len(grp)
    codes = np.unique(grp.gender)
    gidx = np.searchsorted(codes, grp.gender)
    span = int(grp.age.max()) + 2 if n else 2
    key = gidx * span + grp.age  # (gender index, age) as one sortable number
    order = np.argsort(key, kind="stable")
    key_sorted = key[order]
    cols_vecs = vectors[order]
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    # The candidates' attributes in that order: a slice of them is a view, like the slice of vectors.
    c_seeks, c_age, c_lo, c_hi = (x[order] for x in (grp.seeks, grp.age, grp.lo, grp.hi))
    rows_seeks = grp.seeks[sel[at]]
    at = at[np.lexsort((grp.age[sel[at]], rows_seeks))]
    rows_seeks, rows_age = grp.seeks[sel[at]], grp.age[sel[at]]
    cuts = np.flatnonzero(np.r_[True, rows_seeks[1:] != rows_seeks[:-1], True])
    for s0, s1 in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True):
        want = int(rows_seeks[s0])
        sought = [j for j, code in enumerate(codes.tolist()) if code & want]
        b = s0
        while b < s1:
            # Rows whose ages span at most _AGE_SPAN years: the union of their windows, which every row of
            # the block is scored against, is then at most that much wider than one window.
            e = min(b + _AGE_BLOCK, s0 + int(np.searchsorted(rows_age[s0:s1], rows_age[b] + _AGE_SPAN, "right")))
            pos = at[b:e]
            b = e
            r = sel[pos]
            lo, hi = int(grp.lo[r].min()), int(grp.hi[r].max())
            slices = [
                (int(x), int(y))
                for j in sought
                for x, y in [np.searchsorted(key_sorted, [j * span + max(lo, 0), j * span + min(hi, span - 2) + 1])]
                if y > x
            ]
            if not slices:
                continue
            if isinstance(queries, np.ndarray):
                q = _rows_of(queries, r)
            else:
                q = np.stack([queries.get(int(i), vectors[i]) for i in r]) if queries else vectors[r]
            # One product per slice, in place in the matrix (no copy of the candidates' vectors).
            parts = [q @ cols_vecs[x:y].T for x, y in slices]
            sims = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
            c_pos = np.concatenate([np.arange(x, y) for x, y in slices])
            cut = [c[x:y] for c in (c_seeks, c_age, c_lo, c_hi) for x, y in slices]
            cs, ca, cl, ch = (np.concatenate(cut[i * len(slices) : (i + 1) * len(slices)]) for i in range(4))
            bad = (
                ((cs[None, :] & grp.gender[r][:, None]) == 0)
                | (ca[None, :] < grp.lo[r][:, None])
                | (ca[None, :] > grp.hi[r][:, None])
                | (cl[None, :] > grp.age[r][:, None])
                | (ch[None, :] < grp.age[r][:, None])
            )
            own = np.searchsorted(c_pos, rank[r])
            inside = (own < len(c_pos)) & (c_pos[np.minimum(own, len(c_pos) - 1)] == rank[r])
            bad[np.flatnonzero(inside), own[inside]] = True  # never oneself
            sims[bad] = -np.inf
            m = len(c_pos)
            width = min(k, m)
            if width < m:
                sims = np.partition(sims, m - width, axis=1)[:, m - width :]
            out[pos, :width] = -np.sort(-sims, axis=1)


def _rows_of(queries: np.ndarray, r: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(queries[r], dtype=np.float32)


def compatible_kth(
    vectors: np.ndarray,
    profiles: Sequence[Profile],
    k: int,
    *,
    queries: dict[int, np.ndarray] | None = None,
    block: int = 2048,
    progress: bool = False,
) -> np.ndarray:
    """Every user's ``kth_sim`` by exact brute force (:func:`compatible_topk`'s K-th column): (n,) float64,
    ``NO_KTH`` for a user with fewer than K compatible users. Arguments as there."""
    top = compatible_topk(vectors, profiles, k, queries=queries, block=block, progress=progress)
    last = top[:, k - 1].astype(np.float64)
    return np.where(np.isfinite(last), last, NO_KTH)


def exact_kth(vectors: np.ndarray, profiles: Sequence[Profile], k: int, *, block: int | None = None) -> np.ndarray:
    """``kth_sim`` of every user by plain exact brute force over all pairs in numpy: the reference
    :func:`compatible_kth` (what ``refresh`` runs) is tested against; same definition for users without a
    like history (it uses the mean vectors, not tastes).

    ``vectors`` (n, d) float32 unit rows, ``profiles`` aligned with them. Returns (n,) float64.
    Memory: one (block, n) similarity block at a time (default: about 32 M entries).
    """
    n = len(profiles)
    if block is None:
        block = max(1, min(1024, (1 << 25) // max(n, 1)))
    genders = sorted({p.gender for p in profiles} | {s for p in profiles for s in p.seeking})
    gidx = {g: i for i, g in enumerate(genders)}
    gender = np.array([gidx[p.gender] for p in profiles])
    seeks = np.zeros((n, len(genders)), dtype=bool)
    for i, p in enumerate(profiles):
        seeks[i, [gidx[s] for s in p.seeking]] = True
    age = np.array([p.age for p in profiles])
    lo = np.array([p.age_min for p in profiles])
    hi = np.array([p.age_max for p in profiles])
    out = np.full(n, NO_KTH, dtype=np.float64)
    for start in range(0, n, block):
        stop = min(start + block, n)
        rows = np.arange(start, stop)
        sims = vectors[start:stop] @ vectors.T
        ok = (
            seeks[rows][:, gender]  # candidate's gender sought by the row user
            & seeks[:, gender[rows]].T  # row user's gender sought by the candidate
            & (age[None, :] >= lo[rows, None])
            & (age[None, :] <= hi[rows, None])
            & (age[rows, None] >= lo[None, :])
            & (age[rows, None] <= hi[None, :])
        )
        ok[np.arange(stop - start), rows] = False
        sims = np.where(ok, sims, -np.inf)
        counts = ok.sum(axis=1)
        has_k = counts >= k
        if np.any(has_k):
            part = -np.partition(-sims[has_k], k - 1, axis=1)[:, k - 1]
            out[rows[has_k]] = part
    return out
