"""Temperature-controlled Gibbs softmax sampling over items.

p(i | u, T) ∝ exp(score(u, i) / T) = exp(-E(u, i) / T). Adding i.i.d. Gumbel noise to
score / T and keeping the k largest draws k distinct items exactly as sequential sampling
without replacement would (the Gumbel-top-k trick, Kool et al. 2019).

* :func:`gumbel_top_k`: the reference, one float64 Gumbel per item and user.
* :func:`sample_top_k`: the same distribution with about sqrt(n_items) random draws per user
  (the top-down Gumbel process), randomness keyed to row positions so that chunked, threaded
  and resumed runs draw the same items for a seed; what export and retrieval use.
* :func:`sample_recommendations`: chunked sampling for any ``Recommender`` (via ``score``).
* :func:`mean_entropy`, :func:`expected_coverage`, :func:`calibrate_temperature`: choose T
  for a target mean entropy of p(. | u, T) or a target catalog coverage of the sampled lists.
"""

from __future__ import annotations

import functools
import operator

import numpy as np
import scipy.sparse as sp

from recsys_ebm.ranking.topk import mask_items, top_k


def gumbel_top_k(
    scores: np.ndarray,
    k: int,
    temperature: float,
    rng: np.random.Generator,
    *,
    exclude: sp.csr_matrix | None = None,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample k distinct items per row from softmax(scores / T) over eligible items.

    ``temperature == 0`` is the exact top-k. Returns ids int64 (n, k) and the items'
    original scores float32 (n, k) in sampled order, padded with -1 / -inf.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return top_k(scores, k, exclude=exclude, allowed=allowed)
    mask_items(scores, exclude, allowed)
    perturbed = scores.astype(np.float64) / temperature + rng.gumbel(size=scores.shape)
    ids, _ = top_k(perturbed, k)
    values = np.full(ids.shape, -np.inf, dtype=np.float32)
    valid = ids >= 0
    values[valid] = np.take_along_axis(scores, np.where(valid, ids, 0), axis=1)[valid]
    return ids, values


def softmax_probabilities(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax(scores / T) in float64, -inf entries get probability 0."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for probabilities, got {temperature}")
    z = scores.astype(np.float64) / temperature
    z -= np.max(z, axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------- fast sampler
#
# Gumbel-top-k needs one Gumbel draw per item and user: for 27,000 items that costs more than
# scoring them. `sample_top_k` draws the same distribution with about sqrt(n_items) draws per
# user, using the top-down construction of the Gumbel process (Maddison et al. 2014): split the
# items into G groups; the largest key of a group, max_i (z_i + g_i), is Gumbel(log sum_i e^z_i)
# and its argmax is categorical ∝ e^z_i, independently. Popping the group with the largest key
# yields the next item of the Gumbel-top-k order; the rest of that group then has a largest key
# distributed as a Gumbel truncated below the popped key. k pops give the k distinct items, in
# order, exactly as sequential sampling without replacement would.

#: Rows (users) that share random streams. Row r of a request uses the streams of block
#: (row_offset + r) // RNG_BLOCK, drawn whole, so results never depend on batch sizes, threads
#: or resumption: chunked == unchunked for the same seed. They depend on the seed, the row's
#: position and the number of items; the first j draws do not depend on k.
RNG_BLOCK = 64


def _check_k(k) -> int:
    try:
        k = operator.index(k)
    except TypeError:
        raise ValueError(f"k must be an integer, got {k!r}") from None
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return k


def block_generator(seed: int, block: int, stream: int = 0) -> np.random.Generator:
    """The generator of one block of rows (``stream`` separates independent uses)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=(int(block), int(stream)))))


def _group_layout(n_items: int) -> tuple[int, int]:
    """(G groups, L items per group), G * L >= n_items, G about 4 sqrt(n_items).

    Group g holds items g L .. g L + L - 1: each of the k steps reads one short contiguous run
    of a row, and group masses are one matrix-vector product.
    """
    n_groups = max(1, min(n_items, int(np.ceil(4 * np.sqrt(n_items)))))
    group_size = max(1, -(-n_items // n_groups))
    return -(-n_items // group_size), group_size


@functools.lru_cache(maxsize=16)
def _group_members(n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Item of each (group, slot), int64 (G, L) clipped into range, and which slots exist."""
    n_groups, group_size = _group_layout(n_items)
    table = np.arange(n_groups * group_size, dtype=np.int64).reshape(n_groups, group_size)
    valid = table < n_items
    np.minimum(table, n_items - 1, out=table)
    table.flags.writeable = valid.flags.writeable = False
    return table, valid


def _block_draws(seed: int, row_offset: int, n: int, n_groups: int, k: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gumbels (n, G), uniforms (n, k), exponentials (n, k) for rows row_offset .. + n."""
    if n == 0:
        return np.empty((0, n_groups)), np.empty((0, k)), np.empty((0, k))
    first, last = row_offset // RNG_BLOCK, (row_offset + n - 1) // RNG_BLOCK
    gumbels, uniforms, expos = [], [], []
    for block in range(first, last + 1):
        # -log E is Gumbel(0, 1); float32 draws are plenty for the group keys and twice as fast
        expo = block_generator(seed, block, 0).standard_exponential((RNG_BLOCK, n_groups), dtype=np.float32)
        gumbels.append(-np.log(np.maximum(expo, np.finfo(np.float32).tiny)))
        # per-step draws in their own streams, step-major: the first j steps do not depend on k,
        # so a sample of k items starts with the sample of fewer items for the same seed
        uniforms.append(block_generator(seed, block, 2).random((k, RNG_BLOCK)).T)
        expos.append(np.maximum(block_generator(seed, block, 3).standard_exponential((k, RNG_BLOCK)).T,
                                np.finfo(np.float64).tiny))
    lo = row_offset - first * RNG_BLOCK
    return (np.concatenate(gumbels)[lo:lo + n], np.concatenate(uniforms)[lo:lo + n],
            np.concatenate(expos)[lo:lo + n])


def _fallback_gumbels(seed: int, rows: np.ndarray, n_items: int) -> np.ndarray:
    """Full Gumbel rows (len(rows), n_items) for absolute row positions ``rows``."""
    out = np.empty((len(rows), n_items))
    for block in np.unique(rows // RNG_BLOCK):
        draws = block_generator(seed, int(block), stream=1).gumbel(size=(RNG_BLOCK, n_items))
        sel = rows // RNG_BLOCK == block
        out[sel] = draws[rows[sel] % RNG_BLOCK]
    return out


def sample_top_k(
    scores: np.ndarray,
    k: int,
    temperature: float,
    seed: int = 0,
    *,
    exclude: sp.csr_matrix | None = None,
    allowed: np.ndarray | None = None,
    row_offset: int = 0,
    return_log_norm: bool = False,
):
    """Sample k distinct items per row from softmax(scores / T) over eligible items, seeded.

    Same distribution as :func:`gumbel_top_k` (sampling without replacement, in draw order),
    with O(sqrt(n_items)) random draws per row instead of n_items, and randomness tied to row
    positions: row ``r`` uses the stream of ``row_offset + r`` (see ``RNG_BLOCK``), so the same
    seed gives the same draws however users are chunked. ``temperature == 0`` is the exact
    top-k. ``scores`` is used as scratch: excluded and drawn items are set to -inf in place.

    Weights are exp(s / T) in float32 (rows that would overflow or underflow subtract their
    maximum first): an item less likely than the row's best by a factor below ~1e-25 may have
    weight 0 and is then drawn only after every more likely item; rows whose weights run out
    that way (and T -> 0) finish with float64 Gumbel-top-k over the items left, still exact.

    Parameters
    ----------
    scores : float (n, n_items), higher is better (-E); C-contiguous.
    exclude : CSR (n, n_items), optional; stored entries are never drawn.
    allowed : bool (n_items,) or item ids, optional.
    row_offset : absolute position of row 0 (for chunked calls).
    return_log_norm : also return log sum_i exp(s_i / T) over eligible items, float64 (n,).

    Returns
    -------
    ids int64 (n, k) in draw order and their scores float32 (n, k), padded with -1 / -inf;
    with ``return_log_norm``, a third array log_norm float64 (n,) (-inf for empty rows).
    """
    from recsys_ebm.ranking.faiss_index import heap_top_k

    if not (0 <= temperature < np.inf):  # also rejects NaN
        raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (n, n_items), got shape {scores.shape}")
    k = _check_k(k)
    mask_items(scores, exclude, allowed)
    scores = np.ascontiguousarray(scores)  # drawn items are masked through a flat view
    n, n_items = scores.shape
    if temperature == 0:
        if return_log_norm:
            raise ValueError("return_log_norm needs temperature > 0")
        return heap_top_k(scores, k)
    n_groups, group_size = _group_layout(n_items)
    mass, shift = _group_masses(scores, temperature, n_groups, group_size)
    total = mass.sum(axis=1)
    gumbels, uniforms, expos = _block_draws(seed, row_offset, n, n_groups, k)
    with np.errstate(divide="ignore"):
        keys = np.log(mass) + gumbels
        log_norm = np.where(total > 0, shift / temperature + np.log(total), -np.inf)
    ids = np.full((n, k), -1, dtype=np.int64)
    values = np.full((n, k), -np.inf, dtype=np.float32)
    rows = np.arange(n)
    flat = scores.reshape(-1)
    row_starts = rows.astype(np.int64)[:, None] * n_items
    table, valid = _group_members(n_items)
    for step in range(k):
        group = np.argmax(keys, axis=1)
        top = keys[rows, group]
        live = top > -np.inf
        if not live.any():
            break
        # the popped group's members, weighed again from their scores (nothing is stored)
        cols = table[group]  # (n, L)
        where = row_starts + cols
        weights = flat[where].astype(np.float32, copy=False)
        _exp_scaled(weights, temperature, weights, shift)
        in_last = np.flatnonzero(group == n_groups - 1)  # only the last group has empty slots
        if in_last.size and not valid[-1].all():
            weights[in_last[:, None], ~valid[-1]] = 0.0
        cdf = np.cumsum(weights, axis=1)
        pick = (cdf <= (uniforms[:, step] * cdf[:, -1])[:, None]).sum(axis=1)
        np.minimum(pick, group_size - 1, out=pick)
        stray = np.flatnonzero(weights[rows, pick] <= 0)
        if stray.size:  # rounding landed past the last positive member: step back onto it
            last = group_size - 1 - np.argmax(weights[stray, ::-1] > 0, axis=1)
            pick[stray] = np.minimum(pick[stray], last)
        chosen = where[rows, pick][live]
        ids[live, step] = cols[rows, pick][live]
        values[live, step] = flat[chosen]
        flat[chosen] = -np.inf  # drawn: never again
        weights[rows, pick] = 0.0
        rest = weights.sum(axis=1).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            mu = np.log(rest)
            # Gumbel(mu) truncated below `top`: mu - log(E + exp(mu - top)); -inf once empty
            keys[rows, group] = np.where(rest > 0, mu - np.logaddexp(np.log(expos[:, step]), mu - top),
                                         -np.inf)
    picked = (ids >= 0).sum(axis=1)
    short = np.flatnonzero(picked < k)
    if short.size:
        left = np.isfinite(scores[short]).sum(axis=1)  # eligible items not drawn yet
        redo = short[left > 0]
        if redo.size:
            _finish_with_gumbels(scores, ids, values, picked, redo, k, temperature, seed, row_offset)
    if return_log_norm:
        return ids, values, log_norm
    return ids, values


#: Weights are exp(s / T) without subtracting each row's maximum (a pass saved). Rows whose
#: total weight overflows, or falls below this (largest s / T under about -46), are redone with
#: their maximum subtracted. Otherwise only items over e^57 times less likely than the row's
#: best can underflow to weight 0.
_MIN_TOTAL = 1e-20
#: Rows weighed per pass when computing group masses: the float32 weights of a pass stay in
#: cache between the exp and the sum instead of round-tripping to memory.
_CACHE_BYTES = 2 << 20


#: exp(x / T) is computed as exp2(x * log2(e) / T): numpy's float32 exp2 is twice as fast.
LOG2E = 1.4426950408889634


def _exp_scaled(scores: np.ndarray, temperature: float, out: np.ndarray,
                shift: np.ndarray | None = None) -> None:
    """``out = exp((scores - shift) / T)`` in float32, in place (-inf scores give 0).

    With ``temperature == 1 / ln 2`` (:data:`LOG2E`) the scaling is the identity and the pass
    is skipped: callers that can produce ``s * log2(e) / T`` for free (in a matrix product) do.
    """
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        source = scores
        if shift is not None and np.any(shift):
            np.subtract(scores, shift.astype(scores.dtype)[:, None], out=out, casting="unsafe")
            source = out
        factor = LOG2E / temperature
        if not np.isfinite(np.float32(factor)):  # log2(e) / T overflows float32: divide instead
            np.divide(source, max(np.float32(temperature / LOG2E), np.finfo(np.float32).smallest_subnormal),
                      out=out, casting="unsafe")
            source = out
        elif factor != 1:
            np.multiply(source, np.float32(factor), out=out, casting="unsafe")
            source = out
        np.exp2(source, out=out, casting="unsafe")


def _group_masses(scores: np.ndarray, temperature: float, n_groups: int, group_size: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Group masses sum_{i in g} exp((s_i - shift) / T), float64 (n, G), and shifts (n,).

    The shift is 0, or the row maximum for rows that would overflow or underflow without it.
    Group g holds items g L .. g L + L - 1.
    """
    n, n_items = scores.shape
    width = n_groups * group_size
    step = max(1, _CACHE_BYTES // (4 * width))
    buffer = np.zeros((min(step, n), width), dtype=np.float32)  # padding stays 0
    ones = np.ones(group_size, dtype=np.float32)
    mass = np.empty((n, n_groups), dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # overflowing rows are redone below
        for start in range(0, n, step):
            stop = min(start + step, n)
            w = buffer[:stop - start]
            _exp_scaled(scores[start:stop], temperature, w[:, :n_items])
            mass[start:stop] = (w.reshape(-1, group_size) @ ones).reshape(stop - start, n_groups)
    shift = np.zeros(n)
    total = mass.sum(axis=1)
    redo = np.flatnonzero(~(total >= _MIN_TOTAL) | ~np.isfinite(total))
    if redo.size:
        row_max = scores[redo].max(axis=1).astype(np.float64)
        keep = np.isfinite(row_max)  # rows with nothing eligible keep mass 0
        redo, row_max = redo[keep], row_max[keep]
        if redo.size:
            fixed = np.zeros((redo.size, width), dtype=np.float32)
            _exp_scaled(scores[redo], temperature, fixed[:, :n_items], shift=row_max)
            mass[redo] = fixed.reshape(redo.size, n_groups, group_size).sum(axis=2)
            shift[redo] = row_max
    return mass, shift


def _finish_with_gumbels(scores: np.ndarray, ids: np.ndarray, values: np.ndarray, picked: np.ndarray,
                         redo: np.ndarray, k: int, temperature: float, seed: int, row_offset: int) -> None:
    """Complete rows whose float32 weights ran out with float64 Gumbel-top-k over the rest.

    Sampling without replacement is memoryless given the items drawn so far (already -inf in
    ``scores``), so drawing the remaining ones from the renormalised distribution over the rest
    keeps the result exact.
    """
    rest = scores[redo].astype(np.float64)
    with np.errstate(invalid="ignore"):
        keys = (rest - rest.max(axis=1, keepdims=True)) / temperature
    keys += _fallback_gumbels(seed, redo + row_offset, scores.shape[1])
    more, _ = top_k(keys, k)
    for n_done in np.unique(picked[redo]):  # at most k distinct prefix lengths
        sel = np.flatnonzero(picked[redo] == n_done)
        ids[redo[sel], n_done:] = more[sel, :k - n_done]
        got = more[sel, :k - n_done]
        values[redo[sel], n_done:] = np.where(got >= 0, np.take_along_axis(rest[sel], np.maximum(got, 0), axis=1),
                                              -np.inf)


def sample_recommendations(
    model,
    user_ids,
    user_items: sp.csr_matrix | None = None,
    k: int = 10,
    temperature: float = 1.0,
    seed: int = 0,
    *,
    filter_seen: bool = True,
    items: np.ndarray | None = None,
    batch_size: int = 1024,
    fold_in: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exploratory recommendations for any ``Recommender``: ``k`` items per user from
    softmax(score / T) over unseen items, users scored in chunks of ``batch_size``.

    ``user_items`` is (n_users, n_items) indexed by ``user_ids`` or (n, n_items) aligned with
    them. Draws depend on (seed, position in ``user_ids``) only, not on ``batch_size``.

    Returns ids int64 (n, k) in draw order and scores float32 (n, k), padded with -1 / -inf.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    user_ids = np.atleast_1d(np.asarray(user_ids, dtype=np.int64))
    rows = None
    if user_items is not None:
        user_items = sp.csr_matrix(user_items)
        n_rows = user_items.shape[0]
        if n_rows == len(user_ids) and (fold_in or n_rows != getattr(model, "n_users", None)):
            rows = user_items
        elif n_rows == getattr(model, "n_users", None):
            rows = user_items[user_ids]
        else:
            raise ValueError(f"user_items has {n_rows} rows: expected {len(user_ids)} (aligned with "
                             f"user_ids) or {getattr(model, 'n_users', '?')} (one per trained user)")
    if fold_in and rows is None:
        raise ValueError("fold_in=True needs user_items aligned with user_ids")
    out_ids = np.full((len(user_ids), k), -1, dtype=np.int64)
    out_scores = np.full((len(user_ids), k), -np.inf, dtype=np.float32)
    for start in range(0, len(user_ids), batch_size):
        stop = min(start + batch_size, len(user_ids))
        chunk = rows[start:stop] if rows is not None else None
        scores = np.asarray(model.score(user_ids[start:stop], chunk if fold_in else None))
        exclude = chunk if filter_seen else None
        out_ids[start:stop], out_scores[start:stop] = sample_top_k(
            scores, k, temperature, seed, exclude=exclude, allowed=items, row_offset=start)
    return out_ids, out_scores


# ----------------------------------------------------------------------------- calibration


def _masked_copy(scores: np.ndarray, exclude, allowed) -> np.ndarray:
    out = np.array(scores, dtype=np.float64, copy=True)
    mask_items(out, exclude, allowed)
    return out


def _entropies(scores: np.ndarray, temperature: float) -> np.ndarray:
    """Entropy (nats) of softmax(s / T) per row of already-masked float64 scores; NaN if empty."""
    z = scores / temperature
    with np.errstate(invalid="ignore"):
        z = z - np.max(z, axis=1, keepdims=True)
        p = np.exp(z)
        total = p.sum(axis=1, keepdims=True)
        p /= total
        h = -np.where(p > 0, p * (z - np.log(total)), 0.0).sum(axis=1)
    h[~np.isfinite(scores).any(axis=1)] = np.nan
    return h


def mean_entropy(scores: np.ndarray, temperature: float, *, exclude: sp.csr_matrix | None = None,
                 allowed: np.ndarray | None = None) -> float:
    """Mean over users of the entropy (nats) of p(. | u, T) over their eligible items.

    Parameters
    ----------
    scores : float (n, n_items); not modified.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    h = _entropies(_masked_copy(scores, exclude, allowed), temperature)
    if np.all(np.isnan(h)):
        raise ValueError("no user has an eligible item")
    return float(np.nanmean(h))


def expected_coverage(scores: np.ndarray, k: int, temperature: float, *, seed: int = 0,
                      exclude: sp.csr_matrix | None = None, allowed: np.ndarray | None = None,
                      n_rounds: int = 1) -> float:
    """Catalog coverage of sampled lists: |union of the users' k draws| / n_items.

    Monte Carlo over ``n_rounds`` rounds of :func:`sample_top_k` with fixed seeds (common random
    numbers, so the estimate is a deterministic function of T). T = 0 gives the exact top-k
    coverage of PROTOCOLS.md.
    """
    masked = _masked_copy(scores, exclude, allowed).astype(np.float32)
    covered = []
    for r in range(n_rounds):
        round_seed = int(np.random.SeedSequence([int(seed), r]).generate_state(1)[0])
        ids, _ = sample_top_k(masked.copy(), k, temperature, round_seed)
        covered.append(np.unique(ids[ids >= 0]).size / scores.shape[1])
    return float(np.mean(covered))


def calibrate_temperature(
    scores: np.ndarray,
    target: float,
    *,
    metric: str = "entropy",
    k: int = 10,
    exclude: sp.csr_matrix | None = None,
    allowed: np.ndarray | None = None,
    seed: int = 0,
    n_rounds: int = 1,
    bounds: tuple[float, float] | None = None,
    rtol: float = 1e-3,
    max_iter: int = 60,
) -> float:
    """The temperature at which a set of users reaches ``target``.

    ``metric="entropy"``: mean entropy (nats) of p(. | u, T) over eligible items, increasing in
    T from ~0 to log(n_eligible). ``metric="coverage"``: :func:`expected_coverage` of k draws per
    user, from the top-k coverage (T -> 0) towards that of uniform draws. Bisection on log T
    inside ``bounds`` (default: 1e-3 to 1e3 times the spread of the scores); ``ValueError`` when
    the target is outside what the bounds reach.

    Parameters
    ----------
    scores : float (n, n_items), the users' scores (-E); not modified.
    """
    if metric not in ("entropy", "coverage"):
        raise ValueError(f"metric must be 'entropy' or 'coverage', got {metric!r}")
    masked = _masked_copy(scores, exclude, allowed)
    finite = masked[np.isfinite(masked)]
    if finite.size == 0:
        raise ValueError("no user has an eligible item")
    if bounds is None:
        spread = float(np.std(finite)) or 1.0
        bounds = (1e-3 * spread, 1e3 * spread)
    lo, hi = (float(b) for b in bounds)
    if not 0 < lo < hi:
        raise ValueError(f"bounds must satisfy 0 < low < high, got {bounds}")

    def value(t: float) -> float:
        if metric == "entropy":
            return float(np.nanmean(_entropies(masked, t)))
        return expected_coverage(masked, k, t, seed=seed, n_rounds=n_rounds)

    v_lo, v_hi = value(lo), value(hi)
    if not min(v_lo, v_hi) <= target <= max(v_lo, v_hi):
        raise ValueError(f"target {metric} {target} is outside [{v_lo:.6g}, {v_hi:.6g}], reached "
                         f"at T = {lo:.3g} .. {hi:.3g}; widen bounds or change the target")
    increasing = v_hi >= v_lo
    best_t, best_gap = lo, abs(v_lo - target)
    for _ in range(max_iter):
        mid = float(np.sqrt(lo * hi))
        v = value(mid)
        if abs(v - target) < best_gap:
            best_t, best_gap = mid, abs(v - target)
        if abs(v - target) <= rtol * max(abs(target), 1e-12) or hi / lo < 1 + 1e-9:
            return mid
        if (v < target) == increasing:
            lo = mid
        else:
            hi = mid
    return best_t
