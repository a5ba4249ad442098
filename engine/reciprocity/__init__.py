"""Reciprocity statistics: each user's ``kth_sim`` and ``kth_top``, stored as columnar blocks in
``matcher_meta`` (``blocks``), and the passes that keep them exact.

``kth_sim`` of user B is the cosine similarity between B's taste (B's mean vector, or the ``taste`` of
``engine.likes`` when B has a like history: what B's own list is ranked by) and B's K-th nearest
*compatible* user (``K = recommend.reciprocity_k``; compatibility as in ``engine.compatibility``).
"Is A within B's top-K?" then becomes ``cos(t_B, v_A) >= kth_sim_B``: one comparison at query time instead
of a reverse ANN query per candidate (the same idea as CSLS's per-point neighbourhood radius against hubness).
A user with fewer than K compatible users gets ``kth_sim = -1`` (everyone compatible is in their top-K).

Next to ``kth_sim`` each user keeps ``kth_top``: ranks K-7..K of their top-K similarities (all of them
when they have fewer than K compatible users). That window is what makes an *incremental* refresh exact: a
new user enters B's top-K exactly when ``cos(t_B, v_new)`` beats ``kth_sim``, and the new ``kth_sim`` is then
read off the window merged with it, without scoring B against their whole pool again.

Where they are stored: not in the users' payloads any more (adding 1 % of users moves ~39 % of users' K-th
neighbour, and Edge takes one partial payload update per user), but in blocks of 2,048 users in ``META``: a pass
over the users table writes them all again (~50 upserts at 100,000 users), a pass over a few users one patch
(``blocks``). Only ``taste`` (a like history) is still a payload key these passes write; the users points keep
their HNSW index (no ``optimize()`` is needed). Stores written before are read from their payloads until a
pass writes the blocks.

The modules, import what you need from the one that defines it:

* ``full`` — :func:`~engine.reciprocity.full.refresh`, the full batch pass (``matcher refresh``);
  ``refresh_departed`` and ``refresh_user`` (``delete-user``, a new like history); ``departures``.
* ``incremental`` — ``refresh_changed``, what ingestion runs: recomputes exactly only the users whose top-K
  the change can move, and merges arrivals into the others' windows; the result equals a full pass
  (tests/engine/test_refresh_incremental.py).
* ``stats`` — the per-user bookkeeping both share (statistics from a top-K row, what changed, writes).
* ``topk`` — the exact top-K similarities over compatible users, in numpy (the computation itself).
* ``table`` — the users table the passes work on, and its cache beside the store (validated by a token in
  META and a journal of every users point written since, ``engine/store/cache.py``, and the statistics
  version it matches).
* ``blocks`` — where the statistics are stored, and the per-process copy ``recommend()`` reads.

``recommend()`` reads ``kth_sim`` through ``blocks.kth_of_points`` (``engine.ranking``); ``engine.schema``
names the fields (the payload keys of stores written before the blocks).
"""
