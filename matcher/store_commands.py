"""Engine commands: ``recommend``, ``stats``, ``delete-user``, ``feedback``, ``refresh``, ``rebuild-model``
(thin wrappers over engine functions)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from engine.settings import Settings

if TYPE_CHECKING:
    from engine.recommend import Match
    from engine.store import Store


def register(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001 - argparse has no public type for it
    """Add the engine's commands to the ``matcher`` parser."""
    register_recommend(sub)
    register_stats(sub)
    register_delete_user(sub)
    register_feedback(sub)
    register_refresh(sub)
    register_rebuild_model(sub)


# -- recommend ----------------------------------------------------------------------------------------------
def register_recommend(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001
    """``matcher recommend USER_ID [--k 20] [--exclude ID ...] [--json]``."""
    p = sub.add_parser(
        "recommend",
        help="reciprocal matches for one user",
        description="The best reciprocal matches for USER_ID: filtered ANN, then reciprocal reranking.",
    )
    # USER_ID is optional to argparse only so that ``--exclude a b USER_ID`` works: --exclude takes every
    # word up to the next flag, and the last of them is the user when none was given before it.
    p.usage = "%(prog)s USER_ID [--k K] [--exclude ID [ID ...]] [--json]"
    p.add_argument("user_id", metavar="USER_ID", nargs="?", help="the user to find matches for")
    p.add_argument("--k", type=int, default=20, help="how many matches (default 20)")
    p.add_argument(
        "--exclude",
        nargs="*",
        default=[],
        metavar="ID",
        help="user ids never to show (seen, blocked); space- or comma-separated",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list of matches (for scripts)")
    p.set_defaults(func=_recommend_command)


def _recommend_command(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from engine.recommend import explain_empty, recommend
    from engine.store import open_store

    args.user_id, args.exclude = _user_and_exclude(args.user_id, args.exclude)
    with open_store(settings, create=False) as store:
        matches = recommend(args.user_id, args.k, exclude=args.exclude, store=store, settings=settings)
        reason = explain_empty(args.user_id, exclude=args.exclude, store=store) if not matches else ""
        rows = _match_rows(store, matches)
    short = ""
    if matches and len(matches) < args.k:
        besides = f" besides the {len(args.exclude)} excluded" if args.exclude else ""
        short = f"only {len(matches)} compatible users for {args.user_id}{besides} (asked for {args.k})"
    if args.json:
        print(json.dumps(rows, indent=2))
        if reason:
            print(f"matcher recommend: no match: {reason}", file=sys.stderr)
        if short:
            print(f"matcher recommend: {short}", file=sys.stderr)
        return 0
    if not matches:
        print(f"no match for {args.user_id}: {reason}")
        return 0
    print(f"{'rank':>4}  {'user_id':<20} {'gender':<9} {'age':>3} {'score':>6} {'a->b':>6} {'b->a':>6}  best_photo")
    for r in rows:
        print(
            f"{r['rank']:>4}  {r['user_id']:<20} {r['gender'] or '-':<9} {r['age'] or '-':>3} {r['score']:6.3f} "
            f"{r['score_a_to_b']:6.3f} {r['score_b_to_a']:6.3f}  {r['best_photo_path'] or r['best_photo_id'] or '-'}"
        )
    if short:
        print(short)
    return 0


def _match_rows(store: Store, matches: list[Match]) -> list[dict[str, Any]]:
    """Each match's fields plus the candidate's gender and age and the best photo's file (``source_path``,
    relative to the folder it was ingested from; None where the store has none)."""
    from engine.schema import PHOTOS, USERS, user_point_id

    got = store.retrieve(USERS, [user_point_id(m.user_id) for m in matches])
    users = {str(p.payload.get("user_id")): p.payload for p in got}
    photo_ids = [m.best_photo_id for m in matches if m.best_photo_id]
    paths = {str(p.id): p.payload.get("source_path") for p in store.retrieve(PHOTOS, photo_ids)} if photo_ids else {}
    return [
        {
            **m.to_dict(),
            "gender": users.get(m.user_id, {}).get("gender"),
            "age": users.get(m.user_id, {}).get("age"),
            "best_photo_path": paths.get(m.best_photo_id) if m.best_photo_id else None,
        }
        for m in matches
    ]


def _user_and_exclude(user_id: str | None, exclude: list[str]) -> tuple[str, list[str]]:
    """USER_ID and the excluded ids from what argparse saw (see ``register_recommend``).

    Raises ``InvalidInput`` if no user id was given at all.
    """
    from engine.errors import InvalidInput

    ids = [part for word in exclude for part in word.split(",") if part]
    if user_id is None:
        if not ids:
            raise InvalidInput("USER_ID: give the user to find matches for (matcher recommend USER_ID)")
        user_id = ids.pop()
    return user_id, ids


# -- stats, delete-user -------------------------------------------------------------------------------------
def register_stats(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001
    """``matcher stats [--json]``."""
    p = sub.add_parser(
        "stats",
        help="what the store holds",
        description="Points per collection and the encoder that made them.",
    )
    p.add_argument("--json", action="store_true", help="print a JSON object (for scripts)")
    p.set_defaults(func=_stats_command)


def _stats_command(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from engine.store import open_store
    from engine.users import store_stats

    with open_store(settings, create=False) as store:
        stats = store_stats(store)
        where = getattr(store, "where", store.backend)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    if stats["encoder_id"] is None:
        print(f"{where}: empty (nothing ingested yet)")
        return 0
    print(f"store:    {where}")
    print(f"encoder:  {stats['encoder_id']} (dim {stats['dim']})")
    print(f"users:    {stats['users']}")
    print(f"photos:   {stats['photos']}")
    return 0


def register_delete_user(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001
    """``matcher delete-user USER_ID [USER_ID ...]``."""
    p = sub.add_parser(
        "delete-user",
        help="remove every stored point of one user (or several)",
        description="Remove each USER_ID's photos, user vector and feedback from every collection (erasure "
        "request). On the embedded store the files are then rewritten so no byte of them remains (a copy of "
        "the store: give several ids to pay it once). Exit status 1 if a user was not stored.",
    )
    p.add_argument("user_ids", nargs="+", metavar="USER_ID")
    p.set_defaults(func=_delete_user_command)


def _delete_user_command(args: argparse.Namespace, settings: Settings) -> int:
    from engine.store import open_store
    from engine.users import delete_users

    with open_store(settings, create=False) as store:
        removed = delete_users(store, args.user_ids, settings=settings)
    for uid, n in removed.items():
        print(f"{uid}: removed {n} points" if n else f"{uid}: not in the store (nothing removed)")
    return 1 if any(n == 0 for n in removed.values()) else 0


# -- feedback -----------------------------------------------------------------------------------------------
def register_feedback(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001
    """``matcher feedback LOG.csv``."""
    p = sub.add_parser(
        "feedback",
        help="record logged likes, passes, blocks and reports",
        description="Record LOG.csv (columns viewer_id,candidate_id,decision,ts; decision like|pass|block|report) "
        "in the store's feedback collection. Idempotent: the same event twice counts once; the later ts wins per "
        "pair; blocks and reports are for good. A bad row stops the run naming its line; nothing is written then.",
    )
    p.add_argument("log", metavar="LOG.csv")
    p.set_defaults(func=_feedback_command)


def _feedback_command(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from engine.feedback import read_feedback_csv, record_feedback
    from engine.store import open_store

    events = read_feedback_csv(Path(args.log))  # every row checked before the store is opened
    with open_store(settings, create=False) as store:  # feedback is about stored users: no store, no users
        rep = record_feedback(store, events)
        took = _optimize(store)
    print(f"{args.log}: {rep.received} events: {rep.added} new, {rep.updated} updated, {rep.unchanged} unchanged")
    print(f"store optimized in {took:.1f} s")
    return 0


def _optimize(store: Store) -> float:
    """``store.optimize()`` after a batch command's writes; its seconds. The feedback log grows in an appendable
    segment that only an optimize seals (``AUX_SEGMENT_KB``, engine/store/meta.py): without it a live app's
    decisions stay in memory (~1.2 KB each on Edge) and the first optimize after millions of them is long. The
    batch commands (``feedback``, ``rebuild-model``) are where a deployment pays that, not each request."""
    t0 = time.perf_counter()
    store.optimize()
    return time.perf_counter() - t0


# -- refresh ------------------------------------------------------------------------------------------------
def register_refresh(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001
    """``matcher refresh``."""
    p = sub.add_parser(
        "refresh",
        help="recompute every user's reciprocity statistics (the full batch pass)",
        description="Recompute kth_sim, kth_top and taste for every user from the stored vectors and like "
        "histories, exactly, and write the ones that changed. Ingestion and delete-user keep them up to date "
        "incrementally; run this after changing recommend.reciprocity_k or taste_blend, or to repair statistics "
        "a stopped run left behind. Its time grows with users x compatible users (docs/scaling.md).",
    )
    p.set_defaults(func=_refresh_command)


def _refresh_command(args: argparse.Namespace, settings: Settings) -> int:
    from engine.reciprocity.full import refresh
    from engine.store import open_store

    with open_store(settings, create=False) as store:  # statistics of stored users: no store, nothing to refresh
        rep = refresh(store, settings)
    print(f"refresh: {rep.users} users, {rep.rewritten} rewritten, {rep.skipped} skipped, in {rep.seconds:.1f} s")
    return 0


# -- rebuild-model ------------------------------------------------------------------------------------------
def register_rebuild_model(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001
    """``matcher rebuild-model``."""
    p = sub.add_parser(
        "rebuild-model",
        help="fit the learned preference model on every stored like and pass (the full batch rebuild)",
        description="Fit the model of engine.learned.model (pickiness, received-like appeal, taste from likes and "
        "passes, latent factors, photo similarity; weights fitted on held-out pairs) on the store's feedback "
        "collection and write it into the meta collection (engine.learned.served). recommend() serves it from "
        "then on (recommend.model=learned); until the first rebuild it ranks by photos. Between rebuilds, each "
        "feedback batch updates the statistics of the users it touches; weights and factors wait for this.",
    )
    p.set_defaults(func=_rebuild_model_command)


def _rebuild_model_command(args: argparse.Namespace, settings: Settings) -> int:
    from engine.learned.rebuild import rebuild_preferences
    from engine.store import open_store

    with open_store(settings, create=False) as store:
        rep = rebuild_preferences(store, settings)
        optimized = _optimize(store)
    took = ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in [*rep.seconds.items(), ("optimize_s", optimized)])
    print(f"rebuild-model: {rep.users} users, {rep.events} likes and passes ({took})")
    print("weights: " + ", ".join(f"{k} {v:+.3f}" for k, v in rep.weights.items()))
    return 0
