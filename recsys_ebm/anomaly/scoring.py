"""Anomaly scores to decisions and their quality: length normalisation of raw scores, the
conformal threshold for a target false-positive rate, ROC AUC and the detection metrics at a
threshold."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- normalisation

#: ``none``: the score as is; ``per_rating``: score / n_u; ``length_z``: score / n_u z-scored against
#: genuine profiles of similar length (one-sided, high = anomalous); ``length_z_abs``: |z|, the two-sided
#: typicality test (Nalisnick et al. 2019): a profile whose energy is far *below* genuine ones
#: of its length is just as atypical (the contaminated setting, where the model memorises the
#: attack's near-duplicate profiles, is exactly that case).
NORMALIZATIONS = ("none", "per_rating", "length_z", "length_z_abs")


@dataclass(frozen=True)
class LengthNormalizer:
    """Scores z-scored against genuine reference profiles of similar length.

    With x = log(n_u), the reference mean at x is a local-linear kernel regression of the
    reference scores on x, and the reference variance a kernel-weighted mean of the squared
    residuals (Gaussian kernel, Silverman's bandwidth on the reference x unless given): a z-score
    among the genuine profiles whose length is within about ``bandwidth`` (x 1.4 at the default
    0.33 on ML-100K) of the scored one, with no assumed shape for how energy grows with length.

    Attributes
    ----------
    x, scores, residuals : float64 (n_ref,), the reference log lengths, scores and residuals
    bandwidth : float
    """

    x: np.ndarray
    scores: np.ndarray
    residuals: np.ndarray
    bandwidth: float

    @classmethod
    def fit(cls, scores: np.ndarray, lengths: np.ndarray,
            bandwidth: float | None = None) -> LengthNormalizer:
        """scores float (n,), lengths int (n,) of genuine reference users (n >= 6)."""
        scores = np.asarray(scores, dtype=np.float64)
        x = np.log(np.maximum(np.asarray(lengths, dtype=np.float64), 1.0))
        if len(scores) < 6 or len(x) != len(scores):
            raise ValueError(f"length normalisation needs >= 6 reference users with lengths, "
                             f"got {len(scores)} scores and {len(x)} lengths")
        if bandwidth is None:
            spread = min(x.std(), (np.quantile(x, 0.75) - np.quantile(x, 0.25)) / 1.34) or x.std()
            bandwidth = 1.06 * max(spread, 1e-3) * len(x) ** -0.2
        fitted = cls(x, scores, np.zeros_like(scores), float(bandwidth))
        mean, _ = fitted._local(x, exclude=np.arange(len(x)))
        return cls(x, scores, scores - mean, float(bandwidth))

    def _local(self, xq: np.ndarray, exclude: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Local-linear mean and local residual variance at xq (q,): float64 (q,), (q,).

        ``exclude`` (q,) leaves reference point ``exclude[j]`` out of query j (-1: none).
        """
        mean = np.empty(len(xq))
        var = np.empty(len(xq))
        for start in range(0, len(xq), 4096):
            q = xq[start:start + 4096, None]
            d = self.x[None, :] - q
            logw = -0.5 * (d / self.bandwidth) ** 2
            w = np.exp(logw - logw.max(axis=1, keepdims=True))  # no underflow far from the data
            if exclude is not None:
                rows = np.flatnonzero(exclude[start:start + 4096] >= 0)
                w[rows, exclude[start:start + 4096][rows]] = 0.0
            s0, s1, s2 = w.sum(1), (w * d).sum(1), (w * d * d).sum(1)
            t0, t1 = w @ self.scores, (w * d) @ self.scores
            det = s0 * s2 - s1 * s1
            flat = det <= 1e-9 * s0 * np.maximum(s2, 1e-300)  # one distinct length nearby
            mean[start:start + 4096] = np.where(flat, t0 / s0, (s2 * t0 - s1 * t1)
                                                / np.where(flat, 1.0, det))
            var[start:start + 4096] = (w @ self.residuals**2) / s0
        return mean, var

    def __call__(self, scores: np.ndarray, lengths: np.ndarray,
                 exclude: np.ndarray | None = None) -> np.ndarray:
        """z-scores float64 (n,) of scores (n,) of profiles with ``lengths`` (n,); ``exclude``
        (n,) names the reference point each one is (-1: none), left out of its own z-score."""
        xq = np.log(np.maximum(np.asarray(lengths, dtype=np.float64), 1.0))
        mean, var = self._local(xq, exclude)
        floor = 1e-12 * max(float(np.mean(self.residuals**2)), 1e-300)
        return (np.asarray(scores, dtype=np.float64) - mean) / np.sqrt(np.maximum(var, floor))


def normalize(scores: np.ndarray, lengths: np.ndarray, method: str, n_ref: int = 0) -> np.ndarray:
    """Apply a length normalisation (:data:`NORMALIZATIONS`).

    scores float (n,), lengths int (n,). ``length_z*`` z-score the per-rating score against the
    first ``n_ref`` rows, the genuine reference users (:class:`LengthNormalizer`); each of them
    is z-scored leave-one-out, so that calibrating a threshold on them is not optimistic.
    Returns float64 (n,).
    """
    scores = np.asarray(scores, dtype=np.float64)
    lengths = np.asarray(lengths)
    if method == "none":
        return scores
    if method == "per_rating":
        return scores / np.maximum(lengths.astype(np.float64), 1.0)
    if method in ("length_z", "length_z_abs"):
        # z-score the per-rating score: it varies little with length, so the kernel smoother's
        # bias (h^2/2 times the curvature of the mean in log n) stays negligible; a sum such as F
        # grows ~linearly in n, i.e. exponentially in log n, and would be biased
        per_rating = scores / np.maximum(lengths.astype(np.float64), 1.0)
        normalizer = LengthNormalizer.fit(per_rating[:n_ref], lengths[:n_ref])
        exclude = np.full(len(scores), -1, dtype=np.int64)
        exclude[:n_ref] = np.arange(n_ref)
        z = normalizer(per_rating, lengths, exclude)
        return np.abs(z) if method == "length_z_abs" else z
    raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {method!r}")


# ----------------------------------------------------------------------------- threshold, metrics


def calibrate_threshold(genuine_scores: np.ndarray, fpr: float = 0.01) -> float:
    """Threshold flagging ``score > t`` at false-positive rate at most ``fpr``.

    The conformal quantile: t is the ceil((n + 1)(1 - fpr))-th smallest of the n genuine
    calibration scores, so a new genuine user exchangeable with them exceeds t with probability
    floor(fpr (n + 1)) / (n + 1) <= fpr (ties aside). With fewer than 1/fpr - 1 calibration
    users no finite threshold has that guarantee and +inf (flag nobody) is returned.
    """
    scores = np.sort(np.asarray(genuine_scores, dtype=np.float64))
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError("calibration needs a non-empty 1-D array of genuine scores")
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("calibration scores contain NaN or inf")
    n = scores.size
    rank = math.ceil((n + 1) * (1.0 - fpr) - 1e-9)
    if rank > n:
        logger.warning("%d calibration users are too few for fpr=%g: flagging nobody", n, fpr)
        return math.inf
    return float(scores[rank - 1])


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count 1/2); labels True = anomalous."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def detection_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """ROC AUC and, flagging ``score > threshold``: achieved FPR, detection rate (= recall),
    precision and F1 (0 when nothing is flagged). scores float (n,), labels bool (n,)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    flagged = scores > threshold
    tp = int((flagged & labels).sum())
    fp = int((flagged & ~labels).sum())
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    recall = tp / n_pos if n_pos else math.nan
    precision = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"auc": roc_auc(scores, labels), "fpr": fp / n_neg if n_neg else math.nan,
            "detection_rate": recall, "precision": precision, "recall": recall, "f1": f1,
            "n_flagged": float(tp + fp), "threshold": float(threshold)}


