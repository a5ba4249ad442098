"""Offline like-rate simulation: does the recommender find pairs who would like each other?

A synthetic population (``make_demo_data``: photos on disk, latent traits in ``truth.json``) goes through the
real pipeline — photos are embedded by the encoder and ingested into the store by ``run_ingest``, and the
engine's recommendations come from ``recommend()`` against that store. Decisions come from the hidden traits
only (never from the vectors), under one of three *worlds*:

``similarity`` (the product's hypothesis)
    People like partners whose looks and attractiveness are close to their own::

        logit P(i likes j) = c_g + w · z(cos(looks_i, looks_j)) − w · z(|q_i − q_j|)

    ``q`` is attractiveness as a percentile within one's gender, ``z`` standardises over compatible pairs, and
    ``w = b_g · sd(r_g) / √2`` gives the two terms together the strength (log-odds per standard deviation)
    that partner attractiveness has in the speed-dating data — as structured as the real world, but by
    similarity instead of by a shared ranking.

``aspiration`` (Bruch & Newman, Science Advances 2018)
    Everyone prefers more attractive partners (the speed-dating curve), people aim about 25 % above their own
    desirability, and the likelihood of saying yes falls as the partner falls further below that aim::

        logit P(i likes j) = c_g + b_g · r_g(q_j) − λ · max(0, min(1, 1.25 · q_i) − q_j)

    ``r_g(q)`` is the rating at percentile ``q`` of the ratings raters of gender ``g`` gave in the data,
    ``b_g`` the data's slope; the 25 % is applied on the percentile scale (an approximation: Bruch & Newman
    measure desirability by a PageRank-like score) and ``λ`` (``gap_penalty``) is a setting, not fitted.

``mixed``
    Both sets of trait terms: ``w · (aspiration terms) + (1 − w) · (similarity terms)``, ``w`` the setting
    ``mixed_weight`` (default 0.5): the data shows the attractiveness gradient, and the product's hypothesis
    may hold in part.

Every world adds per-person terms and intercepts (``build_world``)::

    logit P(i likes j) = c_g + S_ij + s · e_i − κ · e_j

``S`` the trait terms above, ``e`` each person's hidden easiness (standard normal, seeded, not in the
photos). ``s`` is solved so that per-rater yes rates spread as in the data (sd 0.256 over each rater's ~15
dates; binomial noise alone gives 0.137), ``κ`` so that random compatible pairs match at the data's 0.165
(without it the symmetric similarity world matches at 0.23, aspiration at 0.14), and the intercept ``c_g``
of each rater gender so that the like probability averaged over all compatible pairs equals the
speed-dating like rate (0.365 women, 0.474 men; other genders the pooled 0.420).

Strategies, run in the same simulation on the same population, each showing every user ``k`` not yet shown
candidates per round for ``R`` rounds: ``random`` (within the compatibility filter — the "before"),
``popularity`` (most attractive first, by the hidden attractiveness: an upper bound for a popularity ranking
that a real app estimates from like counts), ``similarity`` (one-sided: the store's nearest neighbours of the
viewer's mean vector under the compatibility filter — ANN only), ``engine`` (``recommend()`` excluding those
already shown; with ``engine_likes`` also given the viewer's likes so far), ``engine_capped`` (the engine
with its impression budget, ``recommend.exposure_budget``, set to ``exposure_cap`` per round; every engine
strategy holds an ``engine.ranking.exposure.ExposureLedger``, one period per round), ``qdrant_average`` /
``qdrant_best`` (Qdrant's Recommendation API, ``average_vector`` / ``best_score``, the viewer's logged likes as
positives and passes as negatives, same filter), ``recon`` (RECON-style reciprocal content score; ``baselines``) and
``oracle`` (ranks by the true mutual-like probability ``P(i→j) · P(j→i)``: the ceiling) and
``oracle_capped`` (the oracle skipping anyone already shown ``exposure_cap`` times this round: the
truth-based reference under the same exposure constraint).

Feedback (default on, ``simulate(feedback=False)`` / ``--no-feedback`` to turn off): every learning strategy
(the engine ones, ``qdrant_*``, ``recon``) runs on a clone of the ingested store of its own, and each round's
likes *and* passes are recorded into it (``engine.feedback``) before the next round; the engine then rebuilds
its learned preference model (``engine.learned.rebuild``), as a nightly batch would. Strategies get the store and the
users' ids only, never the hidden traits (a test runs them with ``truth.json`` deleted).

A shown pair's outcome is fixed by a counter-based uniform ``u(i, j)`` of the seed (``i`` likes ``j`` iff
``u(i, j) < P(i→j)``; the reply is ``u(j, i) < P(j→i)``), so every strategy meets the same randomness:
two strategies that show the same pair get the same outcome (common random numbers).
"""

from evaluation.simulation.metrics import (
    METRIC_LABELS,
    METRICS,
    SimulationResult,
    StrategyResult,
    WorldResult,
    evaluate,
)
from evaluation.simulation.population import Population
from evaluation.simulation.report import write_simulation_report
from evaluation.simulation.rounds import Impressions, run_rounds
from evaluation.simulation.run import simulate
from evaluation.simulation.strategies import (
    STRATEGIES,
    STRATEGY_LABELS,
    EngineStrategy,
    ExposureCapped,
    Memo,
    ScoreStrategy,
    StoreSimilarity,
    Strategy,
    oracle_strategy,
    popularity_strategy,
    random_strategy,
)
from evaluation.simulation.tables import strategy_table
from evaluation.simulation.truth import TruthEncoder
from evaluation.simulation.worlds import WORLDS, World, WorldSettings, build_world, pair_uniform, world_curve

__all__ = [
    "METRICS",
    "METRIC_LABELS",
    "STRATEGIES",
    "STRATEGY_LABELS",
    "WORLDS",
    "EngineStrategy",
    "ExposureCapped",
    "Impressions",
    "Memo",
    "Population",
    "ScoreStrategy",
    "SimulationResult",
    "StoreSimilarity",
    "Strategy",
    "StrategyResult",
    "TruthEncoder",
    "World",
    "WorldResult",
    "WorldSettings",
    "build_world",
    "evaluate",
    "oracle_strategy",
    "pair_uniform",
    "popularity_strategy",
    "random_strategy",
    "run_rounds",
    "simulate",
    "strategy_table",
    "world_curve",
    "write_simulation_report",
]
