"""Stage 2 of ``recommend()`` and what it stands on: from stage 1's candidates to the ``k`` matches shown.
``recommend()`` itself (stage 1 and the public API) stays in ``engine.recommend``.

The modules, import what you need from the one that defines it:

* ``askers`` — the asker as ``recommend()`` needs them (point, taste, photos, logged feedback, their row in
  the served learned model), loaded for many askers in a few store calls.
* ``matches`` — stage 2 itself: the photo-only path or the learned path, a candidate's logged decision about
  the asker, then the ``k`` chosen and explained (``Match``).
* ``rerank`` — the pure-numpy maths of the photo-only path (directional appeal, rank reciprocity, fusion).
* ``exposure`` — the impression budget and cold-start slots, with the serving process's ``ExposureLedger``.

The scores they fuse come from ``engine.reciprocity`` (each user's ``kth_sim``) and ``engine.learned`` (the
learned model's probabilities).
"""
