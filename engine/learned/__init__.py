"""The learned two-sided preference model: P(A likes B) and P(B likes A) fitted on the logged likes and
passes (``engine.feedback``), stored in the store's meta collection and served by ``recommend()`` when
``recommend.model`` is ``"learned"`` and a model is stored (else ``recommend()`` ranks by photos).

The modules, import what you need from the one that defines it:

* ``model`` — the model's types, its signals and how a pair is scored (the docstring explains the model).
* ``fit`` — fitting it on a log held in arrays (per-user statistics, tastes, factors, held-out weights).
* ``rebuild`` — the model in the store: the full rebuild (``matcher rebuild-model``) and the incremental
  update after a feedback batch (``engine.feedback.record_feedback`` runs it).
* ``served`` — the stored blocks and the per-process copy ``recommend()`` serves, checked against the stored
  version on every call (never stale).

Pure numpy, importable without torch. Stage 2 of ``recommend()`` (``engine.ranking.matches``) fuses the
two directions.
"""
