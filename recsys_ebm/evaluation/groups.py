"""Group recommendation measures: members' rating correlations, seeded group draws, each
member's NDCG of a group's list, and paired confidence intervals between two strategies.

* :func:`pearson_matrix`: Pearson correlation of every pair of users on their co-rated items
  (NaN with fewer than ``min_common`` co-rated items or no variance on them).
* :func:`draw_groups`: ``random``, ``similar`` (mean pairwise correlation >= 0.27, as in
  Baltrunas et al. 2010) or ``divergent`` (<= 0.1) groups of a size, seeded.
* :func:`member_ndcg`: the NDCG@k of a group's list for each member against that member's own
  test items; :func:`group_measures` the per-group mean, minimum and "some member gets no hit".
* :func:`paired_ci`: mean and 95% CI of per-group differences.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy import stats

from recsys_ebm.evaluation.metrics import hit_matrix, ndcg_at_k

#: Mean pairwise Pearson correlation of a similar group (at least) and a divergent one (at most).
SIMILAR_MIN, DIVERGENT_MAX = 0.27, 0.1
#: Co-rated items two users need for their correlation to be defined.
MIN_COMMON = 5
GROUP_TYPES = ("random", "similar", "divergent")


def pearson_matrix(ratings: sp.csr_matrix, min_common: int = MIN_COMMON) -> np.ndarray:
    """Pearson correlation of each pair of users' ratings on the items both rated: float64
    (n_users, n_users), NaN when fewer than ``min_common`` co-rated items or a constant side.

    With M the rated pattern and R the ratings, every co-rated sum is a matrix product:
    n = M Mᵀ, Σx = R Mᵀ, Σx² = R² Mᵀ, Σxy = R Rᵀ.
    """
    r = sp.csr_matrix(ratings, dtype=np.float64)
    m = r.copy()
    m.data[:] = 1.0
    n = (m @ m.T).toarray()
    sx = (r @ m.T).toarray()  # sx[u, v]: u's ratings summed over the items v rated too
    sxx = (r.multiply(r) @ m.T).toarray()
    sxy = (r @ r.T).toarray()
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = n * sxy - sx * sx.T
        var = (n * sxx - sx**2) * (n * sxx.T - sx.T**2)
        out = cov / np.sqrt(var)
    out[(n < min_common) | ~(var > 1e-12)] = np.nan
    return np.clip(out, -1.0, 1.0)


def mean_pairwise(pearson: np.ndarray, members: np.ndarray) -> float:
    """The mean correlation over the pairs of ``members`` (NaN if any pair is undefined)."""
    block = pearson[np.ix_(members, members)]
    upper = block[np.triu_indices(len(members), 1)]
    return float(upper.mean()) if upper.size else float("nan")


def draw_groups(candidates: np.ndarray, pearson: np.ndarray, size: int, n_groups: int,
                group_type: str, seed: int = 0, max_attempts: int | None = None) -> list[np.ndarray]:
    """Up to ``n_groups`` distinct groups (sorted member ids) of ``size`` users from ``candidates``.

    ``random``: members drawn uniformly. ``similar`` / ``divergent``: a first member drawn
    uniformly, then each next one uniformly among the candidates whose correlation with every
    member so far is defined and whose mean correlation with them is >= :data:`SIMILAR_MIN`
    (similar) or <= :data:`DIVERGENT_MAX` (divergent). Each step keeping its mean on the right
    side keeps the mean over all pairs there, so every group drawn meets the rule. A draw that
    runs out of candidates is dropped; after ``max_attempts`` (default 50 per group) fewer
    groups than asked may be returned: callers report how many.
    """
    if group_type not in GROUP_TYPES:
        raise ValueError(f"unknown group type {group_type!r}; choose one of {', '.join(GROUP_TYPES)}")
    candidates = np.asarray(candidates, dtype=np.int64)
    if size < 1 or size > candidates.size:
        raise ValueError(f"group size {size} is outside 1..{candidates.size} (the candidates)")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(size, GROUP_TYPES.index(group_type))))
    attempts = max_attempts if max_attempts is not None else 50 * n_groups
    sub = pearson[np.ix_(candidates, candidates)]
    found: dict[tuple, np.ndarray] = {}
    for _ in range(attempts):
        if len(found) == n_groups:
            break
        if group_type == "random":
            picked = rng.choice(candidates.size, size, replace=False)
        else:
            picked = _grow(sub, size, group_type, rng)
            if picked is None:
                continue
        members = np.sort(candidates[picked])
        found.setdefault(tuple(members.tolist()), members)
    return list(found.values())


def _grow(sub: np.ndarray, size: int, group_type: str, rng: np.random.Generator) -> np.ndarray | None:
    """One similar / divergent group as positions in ``sub``, or None when it cannot grow."""
    picked = [int(rng.integers(sub.shape[0]))]
    total = sub[picked[0]].copy()  # each candidate's summed correlation with the members
    for step in range(1, size):
        mean = total / step
        ok = np.isfinite(mean) & (mean >= SIMILAR_MIN if group_type == "similar" else mean <= DIVERGENT_MAX)
        ok[picked] = False
        choices = np.flatnonzero(ok)
        if choices.size == 0:
            return None
        picked.append(int(rng.choice(choices)))
        total += sub[picked[-1]]
    return np.array(picked)


def member_ndcg(rec_ids: np.ndarray, groups: list[np.ndarray], test: sp.csr_matrix, k: int = 10
                ) -> list[np.ndarray]:
    """Each member's NDCG@k of its group's list (rows of ``rec_ids``) against the member's own
    test items (rows of ``test`` by user id): one float64 array per group."""
    sizes = np.array([g.size for g in groups])
    users = np.concatenate(groups)
    rows = np.repeat(np.asarray(rec_ids), sizes, axis=0)
    truth = sp.csr_matrix(test)[users]
    hits = hit_matrix(rows, truth)
    values = ndcg_at_k(hits, np.diff(truth.indptr), k)
    return np.split(values, np.cumsum(sizes)[:-1])


def group_measures(per_member: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Per group: the members' mean NDCG, their minimum, and 1.0 when some member has no hit."""
    return {"mean": np.array([v.mean() for v in per_member]),
            "min": np.array([v.min() for v in per_member]),
            "zero_hit": np.array([float((v == 0).any()) for v in per_member])}


def paired_ci(values: np.ndarray, reference: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Mean of ``values - reference`` over paired groups with its t-interval at ``level``."""
    diff = np.asarray(values, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    n = diff.size
    if n < 2:
        return {"diff": float(diff.mean()) if n else float("nan"), "low": float("nan"),
                "high": float("nan")}
    half = stats.t.ppf(0.5 + level / 2, n - 1) * diff.std(ddof=1) / np.sqrt(n)
    mean = float(diff.mean())
    return {"diff": mean, "low": mean - float(half), "high": mean + float(half)}
