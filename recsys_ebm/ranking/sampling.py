"""The one temperature sampler: k distinct items per user from p(i | u, T) ∝ exp(score / T).

p(i | u, T) ∝ exp(score(u, i) / T) = exp(-E(u, i) / T). Adding i.i.d. Gumbel noise to
score / T and keeping the k largest draws k distinct items exactly as sequential sampling
without replacement would (the Gumbel-top-k trick, Kool et al. 2019).

* :func:`sample_top_k`: that distribution with about sqrt(n_items) random draws per user (the
  top-down Gumbel process), its randomness keyed on (seed, user key): a user's draw is the same
  in any batch, chunk, thread, worker, or company of other users.
* :func:`softmax_probabilities`: the distribution itself, in float64.
* :func:`mean_entropy`, :func:`expected_coverage`, :func:`calibrate_temperature`: choose T
  for a target mean entropy of p(. | u, T) or a target catalog coverage of the sampled lists.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.sparse as sp

from recsys_ebm.ranking.topk import apply_masks, check_k, check_temperature, item_mask, top_k


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

#: Users that share random streams. The user with key u uses row u % RNG_BLOCK of the streams
#: of block u // RNG_BLOCK, drawn whole, so a user's draws depend only on the seed, its key and
#: the number of items: never on batch sizes, threads, workers or the other users of a call.
#: Exports and evaluations call with consecutive keys, so each block is drawn once per call;
#: the first j draws do not depend on k.
RNG_BLOCK = 64


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


def _block_draws(seed: int, keys: np.ndarray, n_groups: int, k: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gumbels (n, G), uniforms (n, k), exponentials (n, k) for the users ``keys`` (n,)."""
    n = len(keys)
    gumbels, uniforms = np.empty((n, n_groups), np.float32), np.empty((n, k))
    expos = np.empty((n, k))
    blocks = keys // RNG_BLOCK
    for block in np.unique(blocks):
        rows = np.flatnonzero(blocks == block)
        slots = keys[rows] % RNG_BLOCK
        # -log E is Gumbel(0, 1); float32 draws are plenty for the group keys and twice as fast
        expo = block_generator(seed, int(block), 0).standard_exponential((RNG_BLOCK, n_groups),
                                                                         dtype=np.float32)
        gumbels[rows] = -np.log(np.maximum(expo[slots], np.finfo(np.float32).tiny))
        # per-step draws in their own streams, step-major: the first j steps do not depend on k,
        # so a sample of k items starts with the sample of fewer items for the same seed
        uniforms[rows] = block_generator(seed, int(block), 2).random((k, RNG_BLOCK)).T[slots]
        expos[rows] = np.maximum(block_generator(seed, int(block), 3).standard_exponential(
            (k, RNG_BLOCK)).T[slots], np.finfo(np.float64).tiny)
    return gumbels, uniforms, expos


def _fallback_gumbels(seed: int, rows: np.ndarray, n_items: int) -> np.ndarray:
    """Full Gumbel rows (len(rows), n_items) for the user keys ``rows``."""
    out = np.empty((len(rows), n_items))
    for block in np.unique(rows // RNG_BLOCK):
        draws = block_generator(seed, int(block), stream=1).gumbel(size=(RNG_BLOCK, n_items))
        sel = rows // RNG_BLOCK == block
        out[sel] = draws[rows[sel] % RNG_BLOCK]
    return out


def check_keys(keys: np.ndarray | None, n: int) -> np.ndarray:
    """User keys of a sampling call as int64 (n,): by default 0 .. n-1; keys must be >= 0."""
    if keys is None:
        return np.arange(n, dtype=np.int64)
    keys = np.asarray(keys)
    if keys.shape != (n,) or (keys.size and not np.issubdtype(keys.dtype, np.integer)):
        raise ValueError(f"keys must be {n} integers (one per row), got {keys.dtype} {keys.shape}")
    if keys.size and keys.min() < 0:
        raise ValueError(f"sampling keys must be >= 0, got {int(keys.min())}")
    return keys.astype(np.int64, copy=False)


def sample_top_k(
    scores: np.ndarray,
    k: int,
    temperature: float,
    seed: int = 0,
    *,
    keys: np.ndarray | None = None,
    exclude: sp.csr_matrix | None = None,
    allowed: np.ndarray | None = None,
    return_log_norm: bool = False,
):
    """Sample k distinct items per row from softmax(scores / T) over eligible items, seeded.

    Sampling without replacement, in draw order, with O(sqrt(n_items)) random draws per row
    instead of n_items. Row ``r`` draws from the streams of user key ``keys[r]`` (see
    ``RNG_BLOCK``; default: the row number), so a user's sample depends only on (seed, key).
    ``temperature == 0`` is the exact top-k. ``scores`` is used as scratch: excluded and drawn
    items are set to -inf in place.

    Weights are exp(s / T) in float32 (rows that would overflow or underflow subtract their
    maximum first): an item less likely than the row's best by a factor below ~1e-25 may have
    weight 0 and is then drawn only after every more likely item; rows whose weights run out
    that way (and T -> 0) finish with float64 Gumbel-top-k over the items left, still exact.

    Parameters
    ----------
    scores : float (n, n_items), higher is better (-E); C-contiguous.
    keys : int (n,) >= 0, the users' sampling keys (their row in the model for trained users).
    exclude : CSR (n, n_items), optional; stored entries are never drawn.
    allowed : bool (n_items,) or item ids, optional.
    return_log_norm : also return log sum_i exp(s_i / T) over eligible items, float64 (n,).

    Returns
    -------
    ids int64 (n, k) in draw order and their scores float32 (n, k), padded with -1 / -inf;
    with ``return_log_norm``, a third array log_norm float64 (n,) (-inf for empty rows).
    """
    temperature = check_temperature(temperature)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (n, n_items), got shape {scores.shape}")
    k = check_k(k)
    keys = check_keys(keys, scores.shape[0])
    scores = np.ascontiguousarray(scores)  # masked and drawn items are set through a flat view
    apply_masks(scores, exclude, None if allowed is None else item_mask(scores.shape[1], allowed))
    if temperature == 0:
        if return_log_norm:
            raise ValueError("return_log_norm needs temperature > 0")
        return top_k(scores, k)
    n_groups, group_size = _group_layout(scores.shape[1])
    mass, shift = _group_masses(scores, temperature, n_groups, group_size)
    total = mass.sum(axis=1)
    draws = _block_draws(seed, keys, n_groups, k)
    with np.errstate(divide="ignore"):
        log_norm = np.where(total > 0, shift / temperature + np.log(total), -np.inf)
    ids, values = _pop_groups(scores, k, temperature, mass, shift, draws)
    picked = (ids >= 0).sum(axis=1)
    short = np.flatnonzero(picked < k)
    if short.size:
        left = np.isfinite(scores[short]).sum(axis=1)  # eligible items not drawn yet
        redo = short[left > 0]
        if redo.size:
            _finish_with_gumbels(scores, ids, values, picked, redo, k, temperature, seed, keys)
    if return_log_norm:
        return ids, values, log_norm
    return ids, values


def _pop_groups(scores: np.ndarray, k: int, temperature: float, mass: np.ndarray,
                shift: np.ndarray, draws: tuple[np.ndarray, np.ndarray, np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray]:
    """The k steps of the top-down Gumbel process: pop the group with the largest key, draw
    its member ∝ weight, and give the group's rest a truncated Gumbel key (module comment)."""
    gumbels, uniforms, expos = draws
    n, n_items = scores.shape
    n_groups, group_size = mass.shape[1], _group_layout(n_items)[1]
    with np.errstate(divide="ignore"):
        keys = np.log(mass) + gumbels
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
        pick = _pick_member(weights, uniforms[:, step], group_size)
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
    return ids, values


def _pick_member(weights: np.ndarray, uniform: np.ndarray, group_size: int) -> np.ndarray:
    """Slot of each row's member drawn ∝ ``weights`` (n, L) by inverting the CDF at ``uniform``."""
    rows = np.arange(weights.shape[0])
    cdf = np.cumsum(weights, axis=1)
    pick = (cdf <= (uniform * cdf[:, -1])[:, None]).sum(axis=1)
    np.minimum(pick, group_size - 1, out=pick)
    stray = np.flatnonzero(weights[rows, pick] <= 0)
    if stray.size:  # rounding landed past the last positive member: step back onto it
        last = group_size - 1 - np.argmax(weights[stray, ::-1] > 0, axis=1)
        pick[stray] = np.minimum(pick[stray], last)
    return pick


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
                         redo: np.ndarray, k: int, temperature: float, seed: int, keys: np.ndarray) -> None:
    """Complete rows whose float32 weights ran out with float64 Gumbel-top-k over the rest.

    Sampling without replacement is memoryless given the items drawn so far (already -inf in
    ``scores``), so drawing the remaining ones from the renormalised distribution over the rest
    keeps the result exact.
    """
    rest = scores[redo].astype(np.float64)
    with np.errstate(invalid="ignore"):
        perturbed = (rest - rest.max(axis=1, keepdims=True)) / temperature
    perturbed += _fallback_gumbels(seed, keys[redo], scores.shape[1])
    more, _ = top_k(perturbed, k)
    for n_done in np.unique(picked[redo]):  # at most k distinct prefix lengths
        sel = np.flatnonzero(picked[redo] == n_done)
        ids[redo[sel], n_done:] = more[sel, :k - n_done]
        got = more[sel, :k - n_done]
        values[redo[sel], n_done:] = np.where(got >= 0, np.take_along_axis(rest[sel], np.maximum(got, 0), axis=1),
                                              -np.inf)


# ----------------------------------------------------------------------------- calibration


def _masked_copy(scores: np.ndarray, exclude, allowed) -> np.ndarray:
    out = np.array(scores, dtype=np.float64, copy=True)
    apply_masks(out, exclude, None if allowed is None else item_mask(out.shape[1], allowed))
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
    coverage of docs/protocols.md.
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
