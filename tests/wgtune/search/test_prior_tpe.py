"""TPE with a soft prior: prior draws as docs of the original space, then TPE mostly on the bands; history stays valid."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from hyperopt import STATUS_OK, Domain, Trials, fmin, tpe
from hyperopt.base import JOB_STATE_DONE, trials_from_docs

from wgtune.search.prior_tpe import suggest
from wgtune.search.soft_prior import NeighbourTrials, SoftPrior, build_prior
from wgtune.spec.spaces import load_space

SPACE = load_space("erm", objective_defaults={})
N_STARTUP = 5


def _identity(x):
    return x


def prior() -> SoftPrior:
    rng = np.random.default_rng(0)
    rows = []
    for n in (10**6, 10**7):
        trials = []
        for _ in range(20):
            lr = float(10 ** rng.uniform(-3, -1))
            params = {"lr": lr, "weight_decay": float(10 ** rng.uniform(-6, -1)),
                      "batch_size": int(rng.choice([32, 64, 128])), "optimizer": str(rng.choice(["sgd", "adamw"]))}
            trials.append((params, -((math.log10(lr) + 2) ** 2)))
        rows.append(NeighbourTrials(str(n), n, tuple(trials)))
    return build_prior(SPACE, rows, 3 * 10**6, n_startup=N_STARTUP)


PRIOR = prior()


def history(domain: Domain, k: int) -> Trials:
    """k finished trials of the ORIGINAL space, injected as the router injects MLflow history."""
    trials = Trials()
    rng = np.random.default_rng(1)
    docs = []
    for tid in range(k):
        params = SoftPrior(SPACE).sample(rng)
        vals = SPACE.encode(params)
        misc = {"tid": tid, "cmd": domain.cmd, "workdir": domain.workdir,
                "idxs": {label: [tid] for label in domain.params},
                "vals": {label: [vals[label]] for label in domain.params}}
        result = {"status": STATUS_OK, "loss": (math.log10(params["lr"]) + 2) ** 2}
        [doc] = trials.new_trial_docs([tid], [None], [result], [misc])
        doc["state"] = JOB_STATE_DONE
        docs.append(doc)
    return trials_from_docs(docs)


def test_start_up_suggestions_are_the_priors_draws_as_docs_of_the_original_space():
    domain = Domain(_identity, SPACE.to_hyperopt())

    [doc] = suggest([0], domain, Trials(), 123, prior=PRIOR, n_startup_jobs=N_STARTUP)

    expected = SPACE.encode(PRIOR.sample(np.random.default_rng(123)))
    assert {k: v[0] for k, v in doc["misc"]["vals"].items()} == expected
    assert set(doc["misc"]["idxs"]) == set(domain.params)
    assert SPACE.contains(SPACE.decode(doc["misc"]["vals"])) is None


def test_past_the_start_up_most_suggestions_search_the_bands_and_some_the_whole_space():
    domain = Domain(_identity, SPACE.to_hyperopt())
    trials = history(domain, N_STARTUP + 5)
    [lr] = [b for b in PRIOR.hull() if b.name == "lr"]
    low, high = lr.low, lr.high

    inside = 0
    for seed in range(40):
        [doc] = suggest([100], domain, trials, seed, prior=PRIOR, n_startup_jobs=N_STARTUP)
        assert set(doc["misc"]["vals"]) == set(domain.params) and doc["misc"]["cmd"] == domain.cmd
        params = SPACE.decode(doc["misc"]["vals"])
        assert SPACE.contains(params) is None
        inside += low <= math.log(params["lr"]) <= high

    assert high - low < math.log(0.3 / 1e-4) - 1.0  # the hull is narrower than the space
    assert 20 <= inside < 40  # mostly the bands, never only them


def test_the_narrowed_space_keeps_the_labels_the_hull_and_every_option():
    from hyperopt.pyll import stochastic

    space = PRIOR.tpe_space()
    hull = {b.name: b for b in PRIOR.hull()}

    assert set(Domain(_identity, space).params) == set(Domain(_identity, SPACE.to_hyperopt()).params)
    assert set(hull) == {"lr", "weight_decay"}
    rng = np.random.default_rng(0)
    draws = [stochastic.sample(space, rng=rng) for _ in range(200)]
    for name, band in hull.items():
        assert all(band.low - 1e-9 <= math.log(d[name]) <= band.high + 1e-9 for d in draws)
    assert {d["optimizer"] for d in draws} == {"sgd", "adamw"} and {d["batch_size"] for d in draws} == {32, 64, 128}
    assert SoftPrior(SPACE).tpe_space().keys() == SPACE.to_hyperopt().keys()
    assert SoftPrior(SPACE).hull() == ()


def test_history_injection_works_with_the_prior_and_breaks_tpe_on_the_mixture_space():
    original = Domain(_identity, SPACE.to_hyperopt())
    trials = history(original, 10)

    [doc] = suggest([10], original, trials, 3, prior=PRIOR, n_startup_jobs=N_STARTUP)
    assert SPACE.contains(SPACE.decode(doc["misc"]["vals"])) is None

    # Why the prior is not TPE's space: the mixture's labels are not the history's.
    mixture = Domain(_identity, PRIOR.mixture())
    with pytest.raises(KeyError):
        tpe.suggest([10], mixture, trials, 3, n_startup_jobs=N_STARTUP)


def test_the_mixture_domain_is_refused():
    with pytest.raises(ValueError, match="original space"):
        suggest([0], Domain(_identity, PRIOR.mixture()), Trials(), 0, prior=PRIOR)


def test_an_uninformed_prior_is_plain_tpe_from_the_first_trial():
    domain = Domain(_identity, SPACE.to_hyperopt())

    [ours] = suggest([0], domain, Trials(), 11, prior=SoftPrior(SPACE), n_startup_jobs=N_STARTUP)
    [theirs] = tpe.suggest([0], domain, Trials(), 11, n_startup_jobs=N_STARTUP)

    assert ours["misc"]["vals"] == theirs["misc"]["vals"]


def test_fmin_runs_with_it_over_the_original_space():
    losses = []

    def objective(params):
        loss = (math.log10(params["lr"]) + 2) ** 2
        losses.append((params, loss))
        return loss

    trials = Trials()
    fmin(objective, SPACE.to_hyperopt(), algo=functools.partial(suggest, prior=PRIOR, n_startup_jobs=N_STARTUP),
         max_evals=12, trials=trials, rstate=np.random.default_rng(4), show_progressbar=False)

    assert len(trials.trials) == 12
    assert all(SPACE.contains(p) is None for p, _ in losses)
