"""The start-up of a cell's TPE: draws from its soft prior, then TPE over the original space.

How the prior reaches TPE, and why not as TPE's space. Read hyperopt 0.3.0's `tpe.py`: `suggest`
gathers the observations with `miscs_to_idxs_vals(..., keys=domain.params)`, which indexes every
trial's `misc["idxs"]` by every label of the space; `build_posterior` then fits one adaptive
Parzen estimator per label, from the trials in which that label is active, and `broadcast_best`
picks each label's value independently (univariate TPE). A mixture space has other labels than the
original (per dimension a branch selector, the narrowed draw and the full draw), so:

1. history recorded in the original space (own trials, injected as observations, decision 2)
   makes `tpe.suggest` raise ``KeyError: 'choices'`` on `SoftPrior.mixture()` (the first label
   the history lacks; tests/wgtune/search/test_startup.py holds the case): history injection
   breaks outright;
2. re-encoding history in the mixture's "full" branches makes it valid, but then TPE picks a
   branch by counting good and bad observations per branch, with the prior probabilities as
   pseudo-counts (`ap_categorical_sampler`): a branch with no observations scores
   (n_bad + 2)/(n_good + 2) > 1 and wins. Tried on one dimension (lr as
   ``hp.pchoice("lr.src", [(0.75, <band 0.01-0.1>), (0.25, <full>)])``, 10 history points in the
   full branch, the good ones near lr = 0.03, `n_startup_jobs=5`): TPE chose the unobserved
   branch in 40 of 40 suggestions, whatever that branch held; and a value's evidence is split
   between Parzen estimators (``lr.near`` and ``lr``) that never see each other's trials.

So TPE keeps the original space, where every observation is valid and pools in one estimator, and
the prior acts where TPE itself draws from a prior: the random start-up. `suggest` (below) is a hyperopt
algorithm (the signature of `tpe.suggest`, usable in `fmin` or the router): while the trials hold
fewer than `n_startup_jobs` (counted as `tpe.suggest` counts them), it draws from the mixture,
through hyperopt's own sampler (`pyll.stochastic.sample` on `SoftPrior.mixture()`), and returns
the draw as a trial doc of the ORIGINAL domain; from then on it is `tpe.suggest` over the original
space. TPE then learns from those draws like from any trial, and its Parzen estimators keep the
original prior as one component (`prior_weight`, 1.0 by default), so mass outside the band
remains after the start-up too. `SoftPrior.centre_point()` is the natural first point: every
numeric dimension at its predicted optimum, every choice at its most probable option.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from wgtune.search.soft_prior import SoftPrior

__all__ = ["suggest"]


def suggest(new_ids: Sequence[int], domain: Any, trials: Any, seed: int, *, prior: SoftPrior,
            n_startup_jobs: int = 5, **tpe_options: Any) -> list[dict[str, Any]]:
    """A hyperopt algorithm: draws from `prior` during the start-up, then `tpe.suggest` over the original space.

    Use it as `functools.partial(suggest, prior=..., n_startup_jobs=...)` wherever `tpe.suggest`
    goes (`fmin(algo=...)`, the router's per-cell algo). `domain` must be the ORIGINAL space's: the
    draws are returned as its trial docs, so they, the injected history and TPE's own suggestions
    are one kind of observation.
    """
    from hyperopt import tpe

    labels = {d.name for d in prior.space.searched()}
    if set(domain.params) != labels:
        raise ValueError(f"suggest: the domain's labels {sorted(domain.params)} are not the prior's space "
                         f"{sorted(labels)}; give TPE the original space, not the mixture")
    started = {doc["misc"].get("from_tid", doc["tid"]) for doc in trials.trials}  # as tpe.suggest counts
    if not prior.informed or len(started) >= n_startup_jobs:
        return tpe.suggest(new_ids, domain, trials, seed, n_startup_jobs=n_startup_jobs, **tpe_options)
    rng = np.random.default_rng(seed)
    docs = []
    for tid in new_ids:
        vals = prior.space.encode(prior.sample(rng))
        misc = {"tid": tid, "cmd": domain.cmd, "workdir": domain.workdir,
                "idxs": {k: [tid] for k in vals}, "vals": {k: [v] for k, v in vals.items()}}
        docs.extend(trials.new_trial_docs([tid], [None], [domain.new_result()], [misc]))
    return docs
