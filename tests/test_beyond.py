"""Beyond-accuracy metrics: hand-made lists with known answers, naive per-user references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys_ebm.evaluation.beyond import (
    beyond_accuracy,
    catalog_coverage,
    exposure_counts,
    genre_matrix,
    gini_coefficient,
    gini_index,
    intra_list_diversity,
    item_popularity,
    novelty,
    personalization,
)

# item 0 = {A}, 1 = {A, B}, 2 = {B}, 3 = {} (no genre)
FEATURES = np.array([[1, 0], [1, 1], [0, 1], [0, 0]], dtype=float)


# ---------------------------------------------------------------- known answers


def test_coverage_and_exposure_of_two_disjoint_lists():
    recs = np.array([[0, 1], [2, 3]])
    assert exposure_counts(recs, 5).tolist() == [1, 1, 1, 1, 0]
    assert catalog_coverage(recs, 5) == pytest.approx(4 / 5)
    assert catalog_coverage(recs, 5, k=1) == pytest.approx(2 / 5)
    # sorted exposure [0, 1, 1, 1, 1]: sum (2i - 6) x_i = -2 + 0 + 2 + 4 = 4, over 5 * 4
    assert gini_index(recs, 5) == pytest.approx(0.2)
    assert personalization(recs, 5) == pytest.approx(1.0)


def test_gini_extremes():
    assert gini_index(np.array([[0, 1], [1, 0], [0, 1]]), 2) == pytest.approx(0.0)
    # one item takes every slot of a 4-item catalog: (n - 1) / n
    assert gini_index(np.array([[0], [0], [0]]), 4) == pytest.approx(0.75)
    assert gini_coefficient(np.array([1.0, 3.0])) == pytest.approx((-1 * 1 + 1 * 3) / (2 * 4))
    assert math.isnan(gini_coefficient(np.zeros(3)))


def test_personalization_known_overlaps():
    assert personalization(np.array([[0, 1], [1, 0], [0, 1]]), 3) == pytest.approx(0.0)
    # pairs: (u0, u1) share 1 of 2 items, the other two pairs share none -> 1 - (1/2)/3
    assert personalization(np.array([[0, 1], [1, 2], [3, 4]]), 5) == pytest.approx(5 / 6)
    assert math.isnan(personalization(np.array([[0, 1]]), 3))


def test_novelty_is_mean_self_information():
    popularity = np.array([0.5, 0.25, 1.0, 0.125])
    recs = np.array([[0, 1], [3, -1], [-1, -1]])
    out = novelty(recs, popularity)
    assert out[:2] == pytest.approx([1.5, 3.0])  # (1 + 2) / 2, then -log2(1/8)
    assert math.isnan(out[2])
    assert novelty(recs, popularity, k=1)[:2] == pytest.approx([1.0, 3.0])


def test_item_popularity_is_user_share_with_floor():
    matrix = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 0], [1, 0, 0], [5, 0, 0]], dtype=float))
    assert item_popularity(matrix) == pytest.approx([1.0, 0.25, 0.25])  # item 2 floored to 1


def test_intra_list_diversity_cosine_and_jaccard():
    recs = np.array([[0, 1, 2], [0, 2, -1], [1, -1, -1]])
    s = 1 / math.sqrt(2)
    cos = intra_list_diversity(recs, FEATURES)
    assert cos[0] == pytest.approx(((1 - s) + 1 + (1 - s)) / 3)
    assert cos[1] == pytest.approx(1.0)
    assert math.isnan(cos[2])  # a single item has no pair
    jac = intra_list_diversity(recs, sp.csr_matrix(FEATURES), metric="jaccard")
    assert jac[0] == pytest.approx((0.5 + 1 + 0.5) / 3)
    # an item without features is at distance 1 from everything; identical items at 0
    same = intra_list_diversity(np.array([[0, 3], [1, 0]]), FEATURES)
    assert same == pytest.approx([1.0, 1 - s])


def test_genre_matrix_from_movielens_strings():
    matrix, names = genre_matrix(["Action|Comedy", "", "Comedy", "Drama|Action|Drama"])
    assert names == ["Action", "Comedy", "Drama"]
    assert matrix.toarray().tolist() == [[1, 1, 0], [0, 0, 0], [0, 1, 0], [1, 0, 1]]


def test_beyond_accuracy_collects_every_k():
    recs = np.array([[0, 1], [2, 3]])
    out = beyond_accuracy(recs, 4, (1, 2), popularity=np.full(4, 0.5), item_features=FEATURES)
    assert out["coverage@1"] == pytest.approx(0.5) and out["coverage@2"] == pytest.approx(1.0)
    assert out["novelty@2"] == pytest.approx(1.0)
    assert out["gini@2"] == pytest.approx(0.0)
    # list 0: cos(0, 1) = 1/sqrt(2); list 1: item 3 has no genre -> distance 1
    assert out["diversity@2"] == pytest.approx(((1 - 1 / math.sqrt(2)) + 1) / 2)
    assert set(out) == {f"{m}@{k}" for m in ("coverage", "gini", "personalization", "novelty",
                                              "diversity") for k in (1, 2)}


@pytest.mark.parametrize("bad, message", [
    (np.array([[0, 0]]), "repeats"),
    (np.array([[0, 9]]), "outside"),
    (np.array([0, 1]), "2-D"),
])
def test_bad_lists_raise(bad, message):
    with pytest.raises(ValueError, match=message):
        catalog_coverage(bad, 4)


def test_bad_popularity_and_metric_raise():
    with pytest.raises(ValueError, match="shares"):
        novelty(np.array([[0]]), np.array([0.0, 0.5]))
    with pytest.raises(ValueError, match="metric"):
        intra_list_diversity(np.array([[0, 1]]), FEATURES, metric="euclid")


# ---------------------------------------------------------------- naive references


@st.composite
def lists(draw):
    n_items = draw(st.integers(2, 12))
    n_users = draw(st.integers(1, 8))
    width = draw(st.integers(1, n_items))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    recs = np.stack([rng.permutation(n_items)[:width] for _ in range(n_users)])
    lengths = rng.integers(0, width + 1, size=n_users)
    recs[np.arange(width)[None, :] >= lengths[:, None]] = -1  # pad the tails
    features = (rng.random((n_items, 4)) < 0.4).astype(float)
    popularity = rng.uniform(0.01, 1.0, size=n_items)
    k = draw(st.integers(1, width))
    return recs, n_items, features, popularity, k


def _naive_ild(row, features, metric):
    items = [i for i in row if i >= 0]
    if len(items) < 2:
        return math.nan
    dists = []
    for a, b in itertools.combinations(items, 2):
        x, y = features[a], features[b]
        if metric == "cosine":
            den = np.linalg.norm(x) * np.linalg.norm(y)
            sim = float(x @ y / den) if den > 0 else 0.0
        else:
            union = np.count_nonzero((x > 0) | (y > 0))
            sim = np.count_nonzero((x > 0) & (y > 0)) / union if union else 0.0
        dists.append(1 - sim)
    return float(np.mean(dists))


@settings(max_examples=60, deadline=None)
@given(lists())
def test_metrics_equal_naive_loops(case):
    recs, n_items, features, popularity, k = case
    top = recs[:, :k]
    exposure = np.zeros(n_items)
    for row in top:
        for i in row[row >= 0]:
            exposure[i] += 1
    assert exposure_counts(recs, n_items, k).tolist() == exposure.tolist()
    assert catalog_coverage(recs, n_items, k) == pytest.approx(np.count_nonzero(exposure) / n_items)
    x = np.sort(exposure)
    naive_gini = (sum(abs(a - b) for a in x for b in x) / (2 * n_items * x.sum())
                  if x.sum() else math.nan)
    got = gini_index(recs, n_items, k)
    assert (math.isnan(got) and math.isnan(naive_gini)) or got == pytest.approx(naive_gini)
    if 0 < x.sum():
        assert 0 <= got <= 1
    if len(top) >= 2:
        overlaps = [len(set(a[a >= 0]) & set(b[b >= 0])) / k for a, b in itertools.combinations(top, 2)]
        assert personalization(recs, n_items, k) == pytest.approx(1 - np.mean(overlaps))
        assert 0 <= personalization(recs, n_items, k) <= 1
    nov = novelty(recs, popularity, k)
    for u, row in enumerate(top):
        items = row[row >= 0]
        if items.size:
            assert nov[u] == pytest.approx(np.mean(-np.log2(popularity[items])))
        else:
            assert math.isnan(nov[u])
    for metric in ("cosine", "jaccard"):
        ild = intra_list_diversity(recs, features, k, metric)
        for u, row in enumerate(top):
            ref = _naive_ild(row, features, metric)
            assert (math.isnan(ild[u]) and math.isnan(ref)) or ild[u] == pytest.approx(ref)
            if not math.isnan(ref):
                assert -1e-12 <= ild[u] <= 1 + 1e-12
