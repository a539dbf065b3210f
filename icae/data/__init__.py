"""Data sets for ICAE: pre-training corpora (:mod:`icae.data.corpus`), SQuAD
(:mod:`icae.data.squad`), RepoQA (:mod:`icae.data.repoqa`), agent trajectories
(:mod:`icae.data.trajectories`), file helpers (:mod:`icae.data.io`) and the
``prepare-data`` command (:mod:`icae.data.prepare`). Heavy imports (``datasets``, the hub)
happen inside the functions that need them."""
