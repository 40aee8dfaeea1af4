"""Served probabilities p(i | u, T) are computed in log space: in [0, 1], at most 1 summed
over a list, one-hot as T -> 0, for every temperature from 1e-30 to 1e6; an infinite or NaN
temperature is refused everywhere instead of serving seen items."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys_ebm.export.writer import export_recommendations
from recsys_ebm.models.baselines import EASE
from recsys_ebm.models.dot_ebm import DotEBM

RNG = np.random.default_rng(3)
TRAIN = sp.csr_matrix((RNG.random((30, 50)) < 0.25).astype(np.float32))
MODELS = {
    "dpebm": DotEBM(dim=6, epochs=20, lr=0.05, similarity="dot").fit(TRAIN, show_progress=False),
    "ease": EASE().fit(TRAIN, show_progress=False),
}
temperatures = st.one_of(
    st.floats(min_value=1e-30, max_value=1e6, allow_nan=False),
    st.floats(min_value=-30, max_value=6).map(lambda e: 10.0 ** e),
)


@pytest.mark.parametrize("name", sorted(MODELS))
@settings(max_examples=60, deadline=None)
@given(temperature=temperatures, k=st.integers(1, 12))
def test_probabilities_are_valid_at_every_temperature(name, temperature, k):
    model = MODELS[name]
    users = np.arange(30)
    ids, scores, prob = model.recommend(users, k=k, temperature=temperature, rng=1,
                                        with_probabilities=True)
    assert np.all(ids >= 0)  # every user has more than 12 unseen items
    assert np.all(np.isfinite(prob)) and np.all(prob >= 0) and np.all(prob <= 1)
    assert np.all(prob.sum(axis=1) <= 1 + 1e-9)
    assert not np.any(TRAIN.toarray()[users[:, None], ids]), "a seen item was served"
    if temperature == 0.0 or temperature > 0:
        # the served items' scores are the model's own
        full = model.score(users)
        np.testing.assert_allclose(scores, np.take_along_axis(full, ids, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_tiny_temperatures_are_the_ranking_with_one_hot_probabilities(name):
    model = MODELS[name]
    users = np.arange(30)
    ranked, _ = model.recommend(users, k=5)
    for temperature in (1e-12, 1e-30):
        ids, _, prob = model.recommend(users, k=5, temperature=temperature, rng=2, with_probabilities=True)
        full = model.score(users).astype(np.float64)
        full[TRAIN.toarray() > 0] = -np.inf
        gap = np.sort(full, axis=1)[:, -1] - np.sort(full, axis=1)[:, -2]
        clear = gap > 1e-6  # users whose best item is not tied
        np.testing.assert_array_equal(ids[clear, 0], ranked[clear, 0])
        np.testing.assert_allclose(prob[clear, 0], 1.0, atol=1e-9)


@pytest.mark.parametrize("bad", [math.inf, -1.0, math.nan])
def test_infinite_or_negative_temperatures_are_refused(bad, tmp_path):
    with pytest.raises(ValueError, match="temperature must be"):
        MODELS["dpebm"].recommend(np.arange(3), k=3, temperature=bad)
    with pytest.raises(ValueError, match="temperature must be"):
        export_recommendations(MODELS["ease"], tmp_path / "x.parquet", temperature=bad,
                               show_progress=False)
    assert not (tmp_path / "x.parquet").exists()


def test_exported_probabilities_stay_valid_at_small_temperatures(tmp_path):
    import pandas as pd

    for temperature in (0.0, 0.01, 1e-6, 1e-30):
        path = tmp_path / f"{temperature}.parquet"
        export_recommendations(MODELS["dpebm"], path, k=5, temperature=temperature, show_progress=False)
        frame = pd.read_parquet(path)
        assert frame.probability.between(0, 1).all()
        assert (frame.groupby("user_id").probability.sum() <= 1 + 1e-9).all()
        if temperature in (1e-6, 1e-30):
            first = frame[frame["rank"] == 1].probability
            assert (first > 0.5).all()  # rank 1 carries (nearly) all of the mass, not 0.0
