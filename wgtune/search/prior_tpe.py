"""TPE with a soft prior: start-up draws from the prior, then TPE mostly on the prior's narrowed space.

How the prior reaches TPE, and why not as TPE's space. Read hyperopt 0.3.0's `tpe.py`: `suggest`
gathers the observations with `miscs_to_idxs_vals(..., keys=domain.params)`, which indexes every
trial's `misc["idxs"]` by every label of the space; `build_posterior` then fits one adaptive
Parzen estimator per label, from the trials in which that label is active, and `broadcast_best`
picks each label's value independently (univariate TPE). A mixture space has other labels than the
original (per dimension a branch selector, the narrowed draw and the full draw), so:

1. history recorded in the original space (own trials, injected as observations, decision 2)
   makes `tpe.suggest` raise ``KeyError: 'choices'`` on `SoftPrior.mixture()` (the first label
   the history lacks; tests/wgtune/search/test_prior_tpe.py holds the case): history injection
   breaks outright;
2. re-encoding history in the mixture's "full" branches makes it valid, but then TPE picks a
   branch by counting good and bad observations per branch, with the prior probabilities as
   pseudo-counts (`ap_categorical_sampler`): a branch with no observations scores
   (n_bad + 2)/(n_good + 2) > 1 and wins. Tried on one dimension (lr as
   ``hp.pchoice("lr.src", [(0.75, <band 0.01-0.1>), (0.25, <full>)])``, 10 history points in the
   full branch, the good ones near lr = 0.03, `n_startup_jobs=5`): TPE chose the unobserved
   branch in 40 of 40 suggestions, whatever that branch held; and a value's evidence is split
   between Parzen estimators (``lr.near`` and ``lr``) that never see each other's trials.

So TPE keeps the original labels, where every observation is valid and pools in one estimator,
and the prior acts in two ways hyperopt itself provides. `suggest` (below) is a hyperopt algorithm
(the signature of `tpe.suggest`, usable in `fmin` or as the router's per-cell algo):

- the random start-up (while the trials hold fewer than `n_startup_jobs`, counted as
  `tpe.suggest` counts them) draws from the mixture, through hyperopt's own sampler
  (`pyll.stochastic.sample` on `SoftPrior.mixture()`), and returns the draw as a trial doc of the
  ORIGINAL domain;
- after it, each suggestion is, as `hyperopt.mix.suggest` picks between algorithms, with
  probability 1 - `outside` `tpe.suggest` on `SoftPrior.tpe_space()` (the original labels and
  kinds, numeric bounds narrowed to the bands, choices reweighted but all kept: the narrowed
  space's Parzen estimators take the band as their prior component and the weights as their
  categorical pseudo-counts), and with probability `outside` `tpe.suggest` on the original
  space. Both read the same trials; the narrowed one's docs carry the original labels and
  values inside the original bounds, so they are the router's own docs.

So a quarter of the suggestions (by default) can land anywhere, with TPE's full knowledge, and
the rest search where the neighbours say the optimum is, as today's box does, but without cutting
a choice, with a band that covers the size trend, and without collapsing at margin 0.
`SoftPrior.transferred` holds the first points to propose before all of this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from wgtune.search.soft_prior import SoftPrior

__all__ = ["suggest"]


def suggest(new_ids: Sequence[int], domain: Any, trials: Any, seed: int, *, prior: SoftPrior,
            n_startup_jobs: int = 5, **tpe_options: Any) -> list[dict[str, Any]]:
    """A hyperopt algorithm: prior draws during the start-up, then TPE on the prior's narrowed space
    or (with probability `prior.outside`) on the original one; see the module doc.

    Use it as `functools.partial(suggest, prior=..., n_startup_jobs=...)` wherever `tpe.suggest`
    goes (`fmin(algo=...)`, the router's per-cell algo). `domain` must be the ORIGINAL space's: the
    docs returned are its docs, so they, the injected history and TPE's suggestions are one kind
    of observation. An uninformed prior is plain `tpe.suggest`.
    """
    from hyperopt import Domain, tpe

    labels = {d.name for d in prior.space.searched()}
    if set(domain.params) != labels:
        raise ValueError(f"suggest: the domain's labels {sorted(domain.params)} are not the prior's space "
                         f"{sorted(labels)}; give TPE the original space, not the mixture")
    if not prior.informed:
        return tpe.suggest(new_ids, domain, trials, seed, n_startup_jobs=n_startup_jobs, **tpe_options)
    rng = np.random.default_rng(seed)
    started = {doc["misc"].get("from_tid", doc["tid"]) for doc in trials.trials}  # as tpe.suggest counts
    if len(started) >= n_startup_jobs:
        narrowed = rng.random() >= prior.outside
        where = Domain(domain.fn, prior.tpe_space(), pass_expr_memo_ctrl=domain.pass_expr_memo_ctrl) if narrowed \
            else domain
        docs = tpe.suggest(new_ids, where, trials, int(rng.integers(2**31 - 1)), n_startup_jobs=n_startup_jobs,
                           **tpe_options)
        for doc in docs:  # the original domain's docs, whichever space proposed them
            doc["misc"]["cmd"], doc["misc"]["workdir"] = domain.cmd, domain.workdir
        return docs
    docs = []
    for tid in new_ids:
        vals = prior.space.encode(prior.sample(rng))
        misc = {"tid": tid, "cmd": domain.cmd, "workdir": domain.workdir,
                "idxs": {k: [tid] for k in vals}, "vals": {k: [v] for k, v in vals.items()}}
        docs.extend(trials.new_trial_docs([tid], [None], [domain.new_result()], [misc]))
    return docs
