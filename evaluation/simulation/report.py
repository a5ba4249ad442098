"""The simulation's report: ``report.md`` (tables, calibration, method), its figures and ``results.json``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from evaluation.calibration import CalibrationData
from evaluation.simulation.figures import plot_calibration, plot_newcomers, plot_oracle_share, plot_strategies
from evaluation.simulation.metrics import SimulationResult
from evaluation.simulation.tables import newcomer_table, strategy_table


def write_simulation_report(result: SimulationResult, calib: CalibrationData, out: Path) -> Path:
    """Write ``out/report.md`` (tables, calibration, method), its figures in ``out/figures/`` and
    ``out/results.json``. Returns the report's path."""
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    plot_calibration(calib, figs / "calibration.png", result.worlds)
    for w in result.worlds:
        plot_strategies(w, figs / f"strategies_{w.world}.png")
    if result.worlds and any(s.oracle_share for s in result.worlds[0].strategies):
        plot_oracle_share(result, figs / "oracle_share.png")
    newcomer_fig = plot_newcomers(result, figs / "newcomers.png")
    (out / "results.json").write_text(json.dumps(result.to_dict(), indent=1, default=_json_default) + "\n")

    c = result.config
    cal = calib.calibration
    lines = [
        "# Like-rate simulation",
        "",
        f"{c['users']} users (population `{c['population']}`), {c['rounds']} rounds of k = {c['k']} "
        "per strategy, "
        f"seed {c['seed']}, exposure cap {c['exposure_cap']} per round, attention {c.get('attention')} "
        f"incoming likes per receiver per round, {c['n_boot']} bootstrap draws. "
        f"Encoder `{c['encoder_id']}` ({c['encoder_source']}), store backend `{c['store_backend']}`; "
        f"on average {c['compatible_pairs_per_user']:.1f} compatible candidates per user.",
        "",
        "Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()),
        "",
        "## Calibration (Columbia speed-dating data)",
        "",
        "![calibration](figures/calibration.png)",
        "",
        "| rater | dates | data like rate | fit intercept | fit slope / rating point |",
        "|---|---|---|---|---|",
    ]
    for g, f in cal.fits.items():
        lines.append(f"| {g} | {f.n_dates} | {f.like_rate:.3f} | {f.intercept:.3f} | {f.slope:.3f} |")
    lines += [
        "",
        f"Data mutual-match rate: {cal.mutual_rate:.3f}.",
        "",
        "Random pairs in each world after calibration (mean P over all compatible pairs = the data's rate by "
        "construction; realised = what the random strategy's viewers actually liked):",
        "",
        "| world | gender | data | mean P, compatible pairs | realised by random strategy | "
        "mean P(i→j)·P(j→i) (data mutual: " + f"{cal.mutual_rate:.3f}) |",
        "|---|---|---|---|---|---|",
    ]
    for w in result.worlds:
        for g in sorted(w.random_pair_like):
            lines.append(
                f"| {w.world} | {g} | {w.data_like_rate[g]:.3f} | {w.random_pair_like[g]:.3f} "
                f"| {w.random_strategy_like.get(g, float('nan')):.3f} | {w.random_pair_mutual:.3f} |"
            )
    lines += [
        "",
        f"Per-rater terms, fitted per world: data per-rater yes-rate sd {cal.rater_yes_sd:.3f} "
        "(over each rater's own dates; the world's is the same statistic over as many random compatible "
        "partners per rater as the data's raters had).",
        "",
        "| world | choosiness s (log-odds sd) | coupling κ (log-odds per sd of partner easiness) "
        "| per-rater yes-rate sd |",
        "|---|---|---|---|",
    ]
    for w in result.worlds:
        lines.append(f"| {w.world} | {w.choosiness:.3f} | {w.coupling:.3f} | {w.rater_yes_sd:.3f} |")
    for w in result.worlds:
        lines += [
            "",
            f"## World: {w.world}",
            "",
            strategy_table(w),
            "",
            f"![{w.world}](figures/strategies_{w.world}.png)",
        ]
        newcomers = newcomer_table(w)
        if newcomers:
            lines += [
                "",
                f"Newcomers: {c.get('newcomers')} users arrive in round {c.get('newcomer_round')} with no history "
                "(target: every newcomer shown k times in their first round; success at least 0.85x the "
                "established users'):",
                "",
                newcomers,
            ]
        short = [s for s in w.strategies if s.shortfall]
        if short:
            lines += [
                "",
                "Recommendations missing (a viewer's compatible pool ran out, or the cap): "
                + ", ".join(f"{s.strategy} {s.shortfall}" for s in short)
                + ".",
            ]
    if newcomer_fig is not None:
        lines += ["", "## Newcomers", "", "![newcomers](figures/newcomers.png)"]
    if (figs / "oracle_share.png").is_file():
        lines += ["", "## How much of the signal survives", "", "![oracle share](figures/oracle_share.png)"]
    lines += ["", "## Method", "", _METHOD_NOTES]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _json_default(o: object) -> object:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o).__name__)


_METHOD_NOTES = """\
- Decisions come from the hidden traits in `truth.json` only, never from the vectors. Three worlds:
  **similarity** (the product's hypothesis: people like looks and attractiveness close to their own),
  **aspiration**
  (Bruch & Newman 2018: everyone prefers more attractive partners as in the speed-dating curve, aims ~25 %
  above their own percentile, and says yes less the further the partner falls below that aim) and
  **mixed** (the two sets of trait terms, weighted by `mixed_weight`). On top of the trait terms every
  world has each person's hidden easiness e (not in the photos): `+ s·e_i` for the rater (choosy and easy
  raters) and `− κ·e_j` for the partner (κ > 0: the unselective are less desired, Eastwick et al. 2007).
  s is solved so that per-rater yes rates spread as in the data (sd 0.256), κ so that random compatible
  pairs match at the data's 0.165, and each rater gender's intercept so that random compatible pairs like
  each other at the speed-dating rate; all three hold together (nested solves).
- Latent attractiveness is put on the data's 1–10 scale by quantile matching: a partner at percentile q of
  their gender gets the rating at quantile q of the ratings raters of the viewer's gender gave.
- Every user is a viewer; each round each strategy shows each viewer up to k compatible users it has not shown
  them before. A pair's outcome is fixed by a seeded counter-based uniform, so strategies that show the same
  pair see the same outcome. Mutual = the viewer likes the candidate and the candidate would like the viewer.
- Matches per user: mutual matches per viewer over all rounds (a capped strategy that leaves viewers short
  can raise the rates per impression while making fewer matches).
- Limited attention: each receiver looks at no more than B incoming likes per round (`attention`, the
  first B to arrive in the round's serving order; B = None looks at all). A like never looked at makes no
  match: *effective matches* count only mutual pairs whose like was looked at; the plain mutual rate and
  matches per user ignore attention (every like answered).
- Precision@k per side: per viewer, the share of their recommendations they like (viewer side) and the share
  who would like them back (candidate side), averaged over viewers. Coverage: share of users shown to anyone.
  Gini: of how often each user was shown (0 = equal exposure).
- Fairness of outcomes: *match Gini* is the Gini of the effective matches each user takes part in (as
  viewer or candidate), *zero-match share* the share of users with none, *envy* the number of users who
  would expect more *effective* matches from another viewer's list than from their own (envy-freeness as
  in Saito & Joachims 2022): each impression counts the true P(i→j)·P(j→i) times the share of the likes
  that candidate received in that round which they looked at (min(1, B / likes received)), so a list of
  over-liked people is worth the matches it can bring under attention. The per-viewer oracle is envy-free
  only with unlimited attention; newcomers (fewer rounds, shorter lists) can envy under any strategy.
- 95 % intervals: percentile bootstrap, two-way. Rates, matches per user and precisions resample viewers
  and, independently, candidates: each impression weighs its viewer's draw count times its candidate's,
  since a viewer's impressions are correlated and so are one candidate's decisions across the ~50 viewers
  they are shown to. (Resampling viewers only was measured too narrow: at 300 users over 8 seeds its
  intervals cover 0.67-0.97 of the seed-to-seed sd for the congested strategies; the two-way ones
  1.2-1.9x it; `tests/evaluation/test_simulation_market.py`.) Coverage and Gini resample the users whose
  exposure they describe. One set of draws is shared by all strategies, so lifts and shares of the
  oracle's lift are paired. Share of the oracle's lift = (strategy − random) / (oracle − random).
- `popularity` ranks by the hidden attractiveness (an upper bound for a popularity ranking). `engine` calls
  `recommend(user, k, exclude=already shown)`; with `engine_likes` on it also passes the viewer's likes so
  far (`likes=`), otherwise it ranks from the photos alone (what this report measures: how much of the
  traits survives photos → encoder → Qdrant → rerank). Like histories are never written to the store, so
  every strategy and world runs on the same store. `similarity` is one filtered nearest-neighbour query per
  viewer on the users' mean vectors, served k at a time. The oracle ranks by P(i→j)·P(j→i) greedily per
  viewer; it is the ceiling for a per-viewer ranking, not a global optimum under exposure limits.
  `oracle_capped` is the same, skipping anyone already shown `exposure_cap` times this round: the
  truth-based reference for `engine_capped`, the engine with its impression budget set to that cap
  (`engine.ranking.exposure`; every engine strategy holds an impression ledger, one period per round).
- `market` (a reference, like the oracle it knows the true P): serves viewers in the round's order and ranks
  each one's candidates by P(i→j)·P(j→i)·P(j still has attention), the last factor Poisson in the likes it
  already sent j this round. With unlimited attention it is the oracle.
- `sinkhorn` (a reference too, after Su et al. 2022): each round, the entropy-regularised allocation over
  each viewer's top-50 open candidates by mutual P that gives every viewer k and keeps each receiver's
  expected incoming likes within B, by Sinkhorn scaling; each viewer is shown their k largest shares.
- With an untrained (tiny, random) encoder the vectors carry little of the traits; a lift near zero for
  `similarity`/`engine` is then the honest result, not a bug."""
