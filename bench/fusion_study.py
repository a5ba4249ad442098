"""How well calibrated is the learned engine's P(B likes A), and which fusion ranks for success?

Runs the engine (feedback on, default settings) for ``--rounds`` rounds of the simulation in one world, then
scores, for a sample of viewers, every compatible candidate they were not shown yet with the served model
(``score_candidates``: P(A→B), P(B→A), a logged reply replacing P(B→A)) and compares with the world's true
probabilities: a calibration table of each direction (pairs without a logged reply), and the top-``k`` of
each fusion, scored offline by the true probabilities (expected likes, expected mutual matches, success =
mutual / likes), beside one-sided cosine and the true-P oracle. Prints markdown; figures for docs/results.md.

    python bench/fusion_study.py --users 600 --rounds 3 --world aspiration --out /tmp/h2/study
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from engine.ranking.rerank import aggregate
from engine.schema import USERS, user_point_id
from engine.settings import Settings
from engine.store import open_store
from evaluation.calibration import fit_calibration
from evaluation.simulation import Population, build_world, run_rounds
from evaluation.simulation.run import (
    ingest_population,
    load_sim_encoder,
    prepare_population,
    shared_strategies,
    strategy_stores,
)

FUSIONS: tuple[tuple[str, str, float], ...] = (
    ("harmonic", "harmonic", 1.0),
    ("geometric", "geometric", 1.0),
    ("product γ=1", "product", 1.0),
    ("product γ=1.5", "product", 1.5),
    ("product γ=2", "product", 2.0),
    ("product γ=3", "product", 3.0),
    ("reverse only", "product", 50.0),
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--world", default="aspiration")
    ap.add_argument("--viewers", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/fusion-study"))
    a = ap.parse_args()

    settings = Settings(store_path=a.out / "store", progress=False)  # type: ignore[call-arg]
    a.out.mkdir(parents=True, exist_ok=True)
    pop_dir = prepare_population(a.out, None, users=a.users, seed=a.seed, settings=settings)
    enc = load_sim_encoder("truth", pop_dir, a.out, settings, 128 * 128)
    store = open_store(settings)
    _, stored = ingest_population(pop_dir, a.out, settings, enc, store)
    pop = Population.from_dir(pop_dir, settings, only=stored)
    compat = pop.compatible()
    world = build_world(a.world, pop, compat, fit_calibration().calibration, seed=a.seed)
    own = strategy_stores(["engine"], store, settings, a.out)
    strat = shared_strategies(["engine"], store, settings, pop, rounds=a.rounds, k=a.k, cap=a.k,
                              engine_likes=False, own=own)["engine"]  # fmt: skip
    imps = run_rounds([strat], world, rounds=a.rounds, k=a.k, seed=a.seed, compat=compat)["engine"]
    st, st_settings = own["engine"]

    from engine.recommend import score_candidates

    ids = pop.user_ids
    shown = np.zeros((pop.n, pop.n), dtype=bool)
    shown[imps.viewer, imps.candidate] = True
    vecs = {p.payload["user_id"]: np.asarray(p.vector, np.float64)
            for p in st.retrieve(USERS, [user_point_id(u) for u in ids], with_vectors=True)}  # fmt: skip
    rng = np.random.default_rng(a.seed)
    viewers = rng.choice(pop.n, size=min(a.viewers, pop.n), replace=False)
    fwd_pred, fwd_true, rev_pred, rev_true = [], [], [], []
    sums = {name: np.zeros(2) for name, _, _ in FUSIONS} | {"one-sided cosine": np.zeros(2), "oracle": np.zeros(2)}
    p = world.p
    for v in viewers.tolist():
        cand = np.flatnonzero(compat[v] & ~shown[v])
        cand = cand[cand != v]
        if cand.size < a.k:
            continue
        got = score_candidates(ids[v], [ids[c] for c in cand], store=st, settings=st_settings)
        keep = np.array([ids[c] in got for c in cand])
        cand = cand[keep]
        ab = np.array([got[ids[c]].score_a_to_b for c in cand])
        ba = np.array([got[ids[c]].score_b_to_a for c in cand])
        logged = shown[cand, v]  # the candidate already decided about v: the reply is known
        fwd_pred.append(ab)
        fwd_true.append(p[v, cand])
        rev_pred.append(ba[~logged])
        rev_true.append(p[cand, v][~logged])
        back = np.where(logged, ba, p[cand, v])  # a logged reply is the realised outcome
        rows = {name: aggregate(ab, ba, m, g) for name, m, g in FUSIONS}
        rows["one-sided cosine"] = np.array([vecs[ids[c]] @ vecs[ids[v]] for c in cand])
        rows["oracle"] = p[v, cand] * back
        for name, score in rows.items():
            top = np.argsort(-score, kind="stable")[: a.k]
            sums[name] += [p[v, cand[top]].sum(), (p[v, cand[top]] * back[top]).sum()]

    print(f"## {a.world}: {a.users} users, after {a.rounds} rounds of the engine, {len(viewers)} viewers\n")
    for label, pred, true in (("P(A→B)", fwd_pred, fwd_true), ("P(B→A), no logged reply", rev_pred, rev_true)):
        x, y = np.concatenate(pred), np.concatenate(true)
        print(f"### calibration of {label}: {x.size} pairs, corr {np.corrcoef(x, y)[0, 1]:.3f}, "
              f"slope {np.polyfit(x, y, 1)[0]:.2f}\n")  # fmt: skip
        print("| predicted bin | pairs | mean predicted | mean true |\n|---|---|---|---|")
        edges = np.quantile(x, np.linspace(0, 1, 11))
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            sel = (x >= lo) & (x <= hi)
            print(f"| {lo:.2f}–{hi:.2f} | {sel.sum()} | {x[sel].mean():.3f} | {y[sel].mean():.3f} |")
        print()
    print("### top-k of each fusion, scored by the true P (unseen candidates)\n")
    print("| ranking | expected likes / viewer | expected mutual / viewer | success |\n|---|---|---|---|")
    for name, (lk, mu) in sums.items():
        print(f"| {name} | {lk / len(viewers):.3f} | {mu / len(viewers):.3f} | {mu / max(lk, 1e-9):.3f} |")
    for s in own.values():
        s[0].close()
    store.close()


if __name__ == "__main__":
    main()
