"""Shilling-attack generator: exact sizes, exact rating distributions (chi-square against the
analytic law, with a wrong law rejected to show the test has power), the target rule, seeds.

``synthetic_ratings`` is shared with test_anomaly.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import ndtr
from scipy.stats import chisquare

from recsys_ebm.anomaly.attacks import (
    Attack,
    AttackConfig,
    ItemStats,
    inject,
    level_probabilities,
    share_count,
    to_levels,
)
from recsys_ebm.data.interactions import Interactions

LEVELS = np.arange(1.0, 6.0)


def synthetic_ratings(n_users: int = 300, n_items: int = 200, n_groups: int = 4,
                      seed: int = 0) -> Interactions:
    """Users in groups that mostly rate their group's block of items (popularity-skewed within
    it), 15-40 ratings each; rating = round(item quality + user bias + noise) on 1..5.
    Raw user ids 1..n_users, item ids 1..n_items."""
    rng = np.random.default_rng(seed)
    block = n_items // n_groups
    group = rng.integers(0, n_groups, n_users)
    item_group = np.minimum(np.arange(n_items) // block, n_groups - 1)
    popularity = 1.0 / (1.0 + np.arange(n_items) % block) ** 0.8
    weights = popularity[None, :] * np.where(item_group[None, :] == group[:, None], 1.0, 0.05)
    keys = np.log(weights) + rng.gumbel(size=weights.shape)  # Gumbel-top-k: sampling w/o replacement
    order = np.argsort(-keys, axis=1)
    length = rng.integers(15, 41, n_users)
    take = np.arange(n_items)[None, :] < length[:, None]
    users = np.repeat(np.arange(n_users), n_items)[take.ravel()]
    items = order.ravel()[take.ravel()]
    quality = rng.normal(3.5, 0.6, n_items)
    bias = rng.normal(0.0, 0.5, n_users)
    ratings = to_levels(quality[items] + bias[users] + rng.normal(0, 0.7, len(items)), LEVELS)
    frame = pd.DataFrame({"user_id": users + 1, "item_id": items + 1, "rating": ratings,
                          "timestamp": np.arange(len(items))})
    return Interactions.from_frame(frame)


@pytest.fixture(scope="module")
def genuine() -> Interactions:
    return synthetic_ratings()


def _profiles(attack: Attack) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, rating) of the injected tail."""
    data = attack.interactions
    tail = slice(len(data) - attack.n_injected, len(data))
    return data.user_idx[tail], data.item_idx[tail], data.ratings[tail]


def test_share_counts_match_the_ml100k_grid_sizes():
    assert [share_count(s, 943) for s in (0.01, 0.05, 0.10)] == [9, 47, 94]
    assert [share_count(s, 1682) for s in (0.03, 0.05, 0.10)] == [50, 84, 168]
    assert share_count(0.001, 10) == 1  # never zero profiles


@pytest.mark.parametrize("kind", ["random", "average", "bandwagon", "segment"])
def test_sizes_are_exact_and_genuine_data_untouched(genuine, kind):
    config = AttackConfig(kind=kind, attack_size=0.1, filler_size=0.08, n_targets=2, n_selected=4)
    attack = inject(genuine, config)
    data = attack.interactions
    n_fake, n_filler = 30, 16  # round(0.1 * 300), round(0.08 * 200)
    n_selected = 4 if kind in ("bandwagon", "segment") else 0
    assert attack.n_filler == n_filler and len(attack.selected) == n_selected
    assert data.n_users == genuine.n_users + n_fake and data.item_map == genuine.item_map
    np.testing.assert_array_equal(attack.is_fake, np.arange(data.n_users) >= genuine.n_users)
    n = len(genuine)
    np.testing.assert_array_equal(data.user_idx[:n], genuine.user_idx)
    np.testing.assert_array_equal(data.ratings[:n], genuine.ratings)
    assert data.user_map.raw_ids[:genuine.n_users].tolist() == genuine.user_map.raw_ids.tolist()
    assert data.user_map.raw_ids[genuine.n_users:].min() > genuine.user_map.raw_ids.max()
    users, items, ratings = _profiles(attack)
    width = 2 + n_selected + n_filler
    assert len(users) == n_fake * width
    np.testing.assert_array_equal(np.bincount(users - genuine.n_users), np.full(n_fake, width))
    matrix = data.rating_matrix[attack.fake_users]
    assert matrix.nnz == n_fake * width  # no item twice in a profile
    assert np.bincount(attack.role, minlength=3).tolist() == [n_fake * n_filler, n_fake * n_selected,
                                                              n_fake * 2]
    assert set(items[attack.role == Attack.TARGET]) == set(attack.targets)
    assert not set(items[attack.role == Attack.FILLER]) & (set(attack.targets) | set(attack.selected))
    np.testing.assert_array_equal(ratings[attack.role == Attack.TARGET], 5.0)
    frame = attack.injected_frame()
    assert len(frame) == len(users) and set(frame["role"]) <= {"filler", "selected", "target"}


def test_ml100k_attack_has_the_grid_sizes(movielens_dir):
    from recsys_ebm.data.movielens import load_movielens

    data = load_movielens("100k", movielens_dir, download=False)
    genuine = Interactions.from_frame(data.ratings)
    attack = inject(genuine, AttackConfig(kind="average", attack_size=0.05, filler_size=0.05))
    assert len(attack.fake_users) == 47 and attack.n_filler == 84
    np.testing.assert_array_equal(np.diff(attack.interactions.rating_matrix[attack.fake_users].indptr),
                                  np.full(47, 85))
    stats = ItemStats.from_ratings(genuine.rating_matrix)
    target = attack.targets[0]
    assert 5 <= stats.counts[target] <= np.median(stats.counts)
    assert stats.means[target] < stats.global_mean


def test_level_probabilities_known_values():
    p = level_probabilities(3.0, 1.0, LEVELS)
    phi = ndtr(np.array([-1.5, -0.5, 0.5, 1.5]))
    expected = [phi[0], phi[1] - phi[0], phi[2] - phi[1], phi[3] - phi[2], 1 - phi[3]]
    np.testing.assert_allclose(p, expected, rtol=1e-12)
    np.testing.assert_allclose(p, [0.0668072, 0.2417303, 0.3829249, 0.2417303, 0.0668072], atol=1e-7)
    np.testing.assert_allclose(level_probabilities(2.4, 0.0, LEVELS), [0, 1, 0, 0, 0])
    np.testing.assert_allclose(level_probabilities([1.0, 4.2], [0.5, 2.0], LEVELS).sum(1), 1.0)


def test_to_levels_rounds_to_nearest_and_clips():
    np.testing.assert_array_equal(to_levels(np.array([0.2, 1.49, 1.5, 2.51, 7.0]), LEVELS),
                                  [1, 1, 1, 3, 5])
    half = np.arange(0.5, 5.01, 0.5)
    np.testing.assert_array_equal(to_levels(np.array([0.1, 1.3, 4.76]), half), [0.5, 1.5, 5.0])


def _filler_ratings(attack: Attack) -> tuple[np.ndarray, np.ndarray]:
    _, items, ratings = _profiles(attack)
    filler = attack.role == Attack.FILLER
    return items[filler], ratings[filler]


def _counts(ratings: np.ndarray) -> np.ndarray:
    return np.array([(ratings == level).sum() for level in LEVELS])


def test_random_filler_follows_the_discretised_global_normal(genuine):
    attack = inject(genuine, AttackConfig(kind="random", attack_size=0.5, filler_size=0.3, seed=3))
    _, ratings = _filler_ratings(attack)
    assert len(ratings) == 150 * 60
    stats = ItemStats.from_ratings(genuine.rating_matrix)
    expected = level_probabilities(stats.global_mean, stats.global_std, LEVELS) * len(ratings)
    assert chisquare(_counts(ratings), expected).pvalue > 1e-3
    # power: a law shifted by 0.15 stars is rejected outright
    wrong = level_probabilities(stats.global_mean + 0.15, stats.global_std, LEVELS) * len(ratings)
    assert chisquare(_counts(ratings), wrong).pvalue < 1e-6


def test_average_filler_follows_each_items_normal(genuine):
    attack = inject(genuine, AttackConfig(kind="average", attack_size=0.5, filler_size=0.3, seed=4))
    items, ratings = _filler_ratings(attack)
    stats = ItemStats.from_ratings(genuine.rating_matrix)
    # expected counts per (item-mean tercile, level): sums of each entry's exact law
    tercile = np.digitize(stats.means[items], np.quantile(stats.means[items], [1 / 3, 2 / 3]))

    def table(mean, std) -> np.ndarray:
        probs = level_probabilities(mean, std, LEVELS)
        return np.stack([probs[tercile == t].sum(0) for t in range(3)])

    observed = np.stack([_counts(ratings[tercile == t]) for t in range(3)])
    right = table(stats.means[items], stats.stds[items])
    assert chisquare(observed.ravel(), right.ravel()).pvalue > 1e-3
    # the random attack's law (global normal for every item) is rejected on the same counts
    wrong = table(np.full(len(items), stats.global_mean), np.full(len(items), stats.global_std))
    assert chisquare(observed.ravel(), wrong.ravel() * observed.sum() / wrong.sum()).pvalue < 1e-6


def test_bandwagon_and_segment_profiles(genuine):
    stats = ItemStats.from_ratings(genuine.rating_matrix)
    bandwagon = inject(genuine, AttackConfig(kind="bandwagon", n_selected=5, attack_size=0.1))
    top = np.argsort(-stats.counts, kind="stable")
    top = top[~np.isin(top, bandwagon.targets)][:5]
    np.testing.assert_array_equal(bandwagon.selected, np.sort(top))
    _, _, ratings = _profiles(bandwagon)
    np.testing.assert_array_equal(ratings[bandwagon.role == Attack.SELECTED], 5.0)

    segment = inject(genuine, AttackConfig(kind="segment", n_selected=5, attack_size=0.1))
    assert np.all(stats.counts[segment.selected] >= np.median(stats.counts))
    assert not set(segment.selected) & set(segment.targets)
    _, _, ratings = _profiles(segment)
    np.testing.assert_array_equal(ratings[segment.role == Attack.FILLER], 1.0)
    np.testing.assert_array_equal(ratings[segment.role == Attack.SELECTED], 5.0)
    # the segment is the target's audience: its items share raters with the target
    raters = genuine.rating_matrix.T.tocsr() > 0
    shared = np.asarray(raters[segment.selected].multiply(raters[segment.targets[0]]).sum(1)).ravel()
    assert np.all(shared >= 1)


def test_target_rule_intent_and_seeds(genuine):
    stats = ItemStats.from_ratings(genuine.rating_matrix)
    median = np.median(stats.counts)
    for seed in range(5):
        push = inject(genuine, AttackConfig(kind="random", intent="push", seed=seed))
        t = push.targets[0]
        assert 5 <= stats.counts[t] <= median and stats.means[t] < stats.global_mean
        nuke = inject(genuine, AttackConfig(kind="random", intent="nuke", seed=seed))
        t = nuke.targets[0]
        assert stats.counts[t] >= median and stats.means[t] > stats.global_mean
        _, _, ratings = _profiles(nuke)
        np.testing.assert_array_equal(ratings[nuke.role == Attack.TARGET], 1.0)
    a = inject(genuine, AttackConfig(kind="average", seed=7))
    b = inject(genuine, AttackConfig(kind="average", seed=7))
    c = inject(genuine, AttackConfig(kind="average", seed=8))
    np.testing.assert_array_equal(a.interactions.item_idx, b.interactions.item_idx)
    np.testing.assert_array_equal(a.interactions.ratings, b.interactions.ratings)
    assert not np.array_equal(a.interactions.item_idx, c.interactions.item_idx)


def test_explicit_targets_override_the_rule(genuine):
    attack = inject(genuine, AttackConfig(kind="random"), targets=np.array([3]))
    np.testing.assert_array_equal(attack.targets, [3])
    with pytest.raises(IndexError, match="target"):
        inject(genuine, AttackConfig(kind="random"), targets=np.array([10_000]))


@pytest.mark.parametrize("options, message", [
    ({"kind": "sybil"}, "kind"),
    ({"intent": "boost"}, "intent"),
    ({"attack_size": 1.5}, "attack_size"),
    ({"filler_size": 0.0}, "filler_size"),
    ({"n_targets": 0}, "n_targets"),
    ({"kind": "bandwagon", "n_selected": 0}, "n_selected"),
])
def test_config_validation(options, message):
    with pytest.raises(ValueError, match=message):
        AttackConfig(**options)


def test_implicit_data_is_refused():
    frame = pd.DataFrame({"user_id": [1, 1, 2, 2], "item_id": [1, 2, 1, 3]})
    with pytest.raises(ValueError, match="single level"):
        inject(Interactions.from_frame(frame), AttackConfig(kind="random"))
