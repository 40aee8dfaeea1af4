"""What the temperature explorer shows for one user (or one typed history) at a temperature:
the served list, the Gibbs distribution's entropy and expected coverage, and its energies.

The list is the model's own ``recommend`` (exact top-k at T = 0, the serving core's seeded
sampler at T > 0), so the page shows exactly what ``recsys-ebm recommend`` and the export serve
for the same seed. The Gibbs distribution at T is p_T(i) = exp(s_i / T) / Z over the items the
user may receive (every item but the ones they already have), with s = -E the model's scores:

- **entropy** H_T = -sum_i p_T(i) log p_T(i), in nats; at T = 0 its limit, log(number of
  items tied at the best score) (0 without ties);
- **effective catalog size** exp(H_T), the perplexity: the number of equally likely items with
  the same entropy;
- **expected coverage over V visits**: the expected number of distinct items a user sees in V
  lists of k, each drawn afresh by the sampler at T (what re-ranking on every visit shows).
  At T = 0 it is exactly k (the same list every visit). At T > 0 it is the mean over R seeded
  replicates of V lists drawn by :func:`recsys_ebm.ranking.select.select`, with its standard
  error; the same seed gives the same estimate.

A **taste mix** of two trained users u and v (``mix_with`` and ``lam`` = λ in [0, 1]) shows the
same for the mixed energy E_λ = (1 − λ) E_u + λ E_v: the list is the model's own
``recommend_mix`` (the product of experts with weights (1 − λ, λ)), the items left out are
those of the users taking part (both for 0 < λ < 1; u's alone at λ = 0, v's alone at λ = 1,
as in :mod:`recsys_ebm.models.group`), and p_T ∝ exp(−E_λ / T) over the rest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys_ebm.data.ids import IdMap
from recsys_ebm.data.movielens import load_movielens_items
from recsys_ebm.errors import DataError, DatasetNotFoundError
from recsys_ebm.experiments.jobs import raw_to_index, saved_id_maps
from recsys_ebm.models import load_model
from recsys_ebm.models.base import Recommender, seed_from
from recsys_ebm.ranking.compose import compose_scores, mix_weights
from recsys_ebm.ranking.select import select
from recsys_ebm.ranking.topk import check_k, check_temperature

logger = logging.getLogger(__name__)

#: Lists per replicate (V) and replicates (R) of the expected coverage estimate.
VISITS, REPLICATES = 10, 20
#: Bins of the energy histogram.
HISTOGRAM_BINS = 30
#: How many of a trained user's items the page lists beside the recommendations.
SHOWN_HISTORY = 20
#: Temperatures of the entropy curve drawn beside the slider (0 to 2, the slider's range).
CURVE_TEMPERATURES = tuple(round(0.1 * i, 1) for i in range(21))


@dataclass(eq=False)
class Explorer:
    """A saved model with its raw-id maps and, when known, its items' titles."""

    model: Recommender
    user_map: IdMap
    item_map: IdMap
    titles: dict[str, str] | None = None
    source: str = ""

    @classmethod
    def from_saved(cls, model_path: str | Path, *, data_dir: str | Path | None = None,
                   items_file: str | Path | None = None) -> Explorer:
        """A directory written by ``recsys-ebm train``; titles from ``items_file`` (a CSV with
        ``item_id`` and ``title`` columns) or else from the local MovieLens copy the model was
        trained on (under ``data_dir``), when there is one."""
        model = load_model(model_path)
        user_map, item_map = saved_id_maps(model, model_path)
        meta = getattr(model, "meta", {}) or {}
        titles = load_titles(meta.get("dataset"), data_dir, items_file)
        return cls(model, user_map, item_map, titles, str(model_path))

    def info(self) -> dict[str, Any]:
        """What the page's header says about the model."""
        meta = getattr(self.model, "meta", {}) or {}
        return {"model": type(self.model).__name__, "source": self.source,
                "dataset": meta.get("dataset"), "fit": meta.get("fit"),
                "n_users": self.model.n_users, "n_items": self.model.n_items,
                "is_ebm": self.model.is_ebm, "fits_ratings": self.model.fits_ratings,
                "has_titles": self.titles is not None, "visits": VISITS, "replicates": REPLICATES}

    def users(self) -> list[str]:
        """Every trained user's raw id, as text."""
        return [str(u) for u in self.user_map.raw_ids]

    def items(self) -> list[dict[str, str | None]]:
        """Every item's raw id and title (None when unknown)."""
        return [{"id": str(i), "title": self.title(str(i))} for i in self.item_map.raw_ids]

    def title(self, raw_item: str) -> str | None:
        return None if self.titles is None else self.titles.get(raw_item)

    def explore(self, *, user: str | None = None, history: list[str] | None = None,
                ratings: list[float] | None = None, mix_with: str | None = None,
                lam: float = 0.0, k: int = 10, temperature: float = 0.0,
                seed: int = 0) -> dict[str, Any]:
        """The list, its probabilities, entropy, coverage and energy histogram for one trained
        ``user`` (raw id) or one new user's ``history`` (raw item ids, ``ratings`` parallel to
        it for rating models), or the taste mix of ``user`` and the trained user ``mix_with``
        at ``lam`` (module docstring), at ``temperature`` with sampling ``seed``."""
        k, temperature, seed = check_k(k), check_temperature(temperature), seed_from(seed)
        if mix_with is None:
            if lam != 0:
                raise ValueError("lam is the weight of a second user: give mix_with as well")
            ids, scores, probabilities, full, seen = self._single(user, history, ratings, k,
                                                                 temperature, seed)
        else:
            ids, scores, probabilities, full, seen = self._mix(user, history, mix_with, lam, k,
                                                              temperature, seed)
        eligible = full[np.isfinite(full)].astype(np.float64)
        entropy = gibbs_entropy(eligible, temperature)
        raw = [str(i) for i in self.item_map.to_raw(ids)]
        return {
            "items": [{"rank": rank, "item_id": item, "title": self.title(item),
                       "score": float(s), "energy": float(-s), "probability": float(p)}
                      for rank, (item, s, p) in enumerate(zip(raw, scores, probabilities,
                                                              strict=True), start=1)],
            "k": k, "temperature": temperature, "seed": seed,
            "mix": None if mix_with is None else {"user": user, "with": mix_with,
                                                  "lam": float(lam)},
            # recommend's probabilities are at T = 1 for the exact ranking (T = 0)
            "probability_temperature": temperature if temperature > 0 else 1.0,
            "n_eligible": int(eligible.size), "entropy": entropy,
            "perplexity": float(np.exp(entropy)),
            "coverage": expected_coverage(full, k, temperature, seed),
            "histogram": energy_histogram(-eligible, temperature, -scores.astype(np.float64)),
            "curve": {"temperature": list(CURVE_TEMPERATURES),
                      "entropy": [gibbs_entropy(eligible, t) for t in CURVE_TEMPERATURES]},
            "history": self._shown_history(seen),
        }

    def _single(self, user, history, ratings, k, temperature, seed) -> tuple[np.ndarray, ...]:
        """(ids, scores, probabilities of the list, the full score row with -inf for the
        items left out, those items) for one user or history, by ``recommend``."""
        users, row, seen = self._who(user, history, ratings)
        ids, scores, probabilities = self.model.recommend(
            users, row, k=k, temperature=temperature, rng=seed, fold_in=row is not None,
            with_probabilities=True)
        keep = ids[0] >= 0
        full = np.array(self.model.score(users, row), dtype=np.float32)[0]
        full[seen] = -np.inf  # what recommend leaves out
        return ids[0][keep], scores[0][keep], probabilities[0][keep], full, seen

    def _mix(self, user, history, mix_with, lam, k, temperature, seed) -> tuple[np.ndarray, ...]:
        """As :meth:`_single` for the taste mix of ``user`` and ``mix_with`` at ``lam``: the
        list by ``recommend_mix``, the distribution of the mixed energy."""
        if user is None or history:
            raise ValueError("a taste mix is of two trained users: give user and mix_with "
                             "(raw ids), not a history")
        members = np.asarray(raw_to_index(self.user_map, [user, mix_with], "user"), np.int64)
        weights = mix_weights(lam)
        ids, scores = self.model.recommend_mix(members, weights, k, temperature=temperature,
                                               rng=seed)
        taking_part, w = members[weights > 0], weights[weights > 0]
        rows = np.array(self.model.score(taking_part), dtype=np.float32)
        have = self.model.seen_items
        seen = (np.empty(0, np.int64) if have is None
                else np.unique(have[taking_part].indices).astype(np.int64))
        rows[:, seen] = -np.inf
        full = compose_scores(rows, "poe", w)
        p = np.zeros(full.size)
        finite = np.isfinite(full)
        p[finite] = gibbs_probabilities(full[finite].astype(np.float64),
                                        temperature if temperature > 0 else 1.0)
        keep = ids >= 0
        return ids[keep], scores[keep], p[ids[keep]], full, seen

    def _who(self, user: str | None, history: list[str] | None, ratings: list[float] | None
             ) -> tuple[np.ndarray, sp.csr_matrix | None, np.ndarray]:
        """(user ids, the history row to fold in or None, the items the user already has)."""
        if (user is None) == (not history):
            raise ValueError("give either a user (raw id) or a history of raw item ids, not both")
        if user is not None:
            users = raw_to_index(self.user_map, [user], "user")
            seen = self.model.seen_items
            return users, None, (np.empty(0, np.int64) if seen is None
                                 else seen[int(users[0])].indices.astype(np.int64))
        items = raw_to_index(self.item_map, list(history), "history")
        if np.unique(items).size != items.size:
            raise ValueError("the history names an item more than once")
        if ratings is not None and len(ratings) != len(history):
            raise ValueError(f"ratings must be parallel to history: {len(ratings)} ratings for "
                             f"{len(history)} items")
        if self.model.fits_ratings and ratings is None:
            raise ValueError(f"{type(self.model).__name__} predicts ratings: give a rating for "
                             "every item of the history")
        values = np.ones(items.size, np.float32) if ratings is None else np.asarray(ratings, np.float32)
        row = sp.csr_matrix((values, (np.zeros(items.size, np.int64), items)),
                            shape=(1, self.model.n_items))
        return np.array([0]), row, items

    def _shown_history(self, seen: np.ndarray) -> dict[str, Any]:
        raw = [str(i) for i in self.item_map.to_raw(seen[:SHOWN_HISTORY])]
        return {"count": int(seen.size), "items": [{"item_id": i, "title": self.title(i)} for i in raw]}


def gibbs_entropy(scores: np.ndarray, temperature: float) -> float:
    """H (nats) of softmax(scores / T) over finite ``scores``; at T = 0 the limit
    log(number of maxima)."""
    if scores.size == 0:
        return 0.0
    if temperature == 0:
        return float(np.log(np.count_nonzero(scores == scores.max())))
    x = scores / temperature
    shift = x.max()
    weights = np.exp(x - shift)
    total = weights.sum()
    return float(shift + np.log(total) - (weights * x).sum() / total)


def gibbs_probabilities(scores: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(scores / T) over finite ``scores``, float64; at T = 0 uniform over the maxima."""
    if temperature == 0:
        top = scores == scores.max()
        return top / top.sum()
    weights = np.exp((scores - scores.max()) / temperature)
    return weights / weights.sum()


def expected_coverage(scores: np.ndarray, k: int, temperature: float, seed: int
                      ) -> dict[str, float | int]:
    """Expected number of distinct items over ``VISITS`` lists of ``k`` drawn at T (see the
    module's docstring); ``scores`` float32 (n_items,), -inf where an item may not be shown."""
    n_eligible = int(np.isfinite(scores).sum())
    if temperature == 0 or n_eligible <= k:
        return {"mean": float(min(k, n_eligible)), "stderr": 0.0, "visits": VISITS,
                "replicates": 1, "n_eligible": n_eligible}
    rows = np.repeat(scores[None, :], REPLICATES * VISITS, axis=0)
    ids, _, _ = select(rows, k, temperature, seed, np.arange(REPLICATES * VISITS, dtype=np.int64))
    lists = ids.reshape(REPLICATES, VISITS * k)
    distinct = np.array([np.unique(r[r >= 0]).size for r in lists], dtype=np.float64)
    return {"mean": float(distinct.mean()), "stderr": float(distinct.std(ddof=1) / np.sqrt(REPLICATES)),
            "visits": VISITS, "replicates": REPLICATES, "n_eligible": n_eligible}


def energy_histogram(energies: np.ndarray, temperature: float, listed: np.ndarray
                     ) -> dict[str, list[float]]:
    """Counts of the eligible items' energies in ``HISTOGRAM_BINS`` bins, the Gibbs mass of
    each bin at T, and the listed items' energies (markers on the page)."""
    if energies.size == 0:
        return {"edges": [], "counts": [], "mass": [], "listed": []}
    edges = np.histogram_bin_edges(energies, bins=HISTOGRAM_BINS)
    counts, _ = np.histogram(energies, bins=edges)
    mass, _ = np.histogram(energies, bins=edges, weights=gibbs_probabilities(-energies, temperature))
    return {"edges": edges.tolist(), "counts": counts.tolist(), "mass": mass.tolist(),
            "listed": listed.tolist()}


def load_titles(dataset: str | None, data_dir: str | Path | None = None,
                items_file: str | Path | None = None) -> dict[str, str] | None:
    """Raw item id (as text) -> title, from ``items_file`` (CSV: ``item_id``, ``title``) or
    the local MovieLens copy named ``dataset``; None when neither is available."""
    if items_file is not None:
        path = Path(items_file)
        if not path.is_file():
            raise FileNotFoundError(f"--items-file {path}: no such file")
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = [c for c in ("item_id", "title") if c not in table.columns]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; found {list(table.columns)}")
        return dict(zip(table["item_id"].str.strip(), table["title"], strict=True))
    if not dataset:
        return None
    try:
        items = load_movielens_items(dataset, data_dir)
    except DataError:  # not a MovieLens variant: a user's own file
        logger.info("no titles for %s: give --items-file (item_id,title) to show them", dataset)
        return None
    except DatasetNotFoundError as exc:
        logger.warning("no titles: %s", exc)
        return None
    return dict(zip(items["item_id"].astype(str), items["title"], strict=True))
