"""The injection evaluation of the streaming watchdog (``anomaly/stream.py``).

1. Users with at least ``tail + 10`` events keep their last ``tail`` events as held-out
   genuine streams; every model is fitted on the events before them (the prefixes).
2. Those users are split (seeded) into calibration and test users. Each watchdog's threshold
   is calibrated on the calibration users' genuine tails for the target FPR.
3. In each test user's tail, from a random switch point s (``2 <= s <= tail / 2``) on, events are
   replaced by an injection: ``takeover`` (another test user's stream), ``bot`` (items drawn
   uniformly), ``burst`` (popularity-drawn items one second apart), ``push`` (one target item,
   the same in every stream, inserted at s, then the genuine events). Items the user already
   has are never injected.
4. Per detector and injection: the ROC AUC of the stream score (the statistic's maximum from s
   on) of attacked against genuine test streams, the detection rate at the calibrated threshold
   (an alert at or after s), the false-positive rate achieved on the genuine test streams (an
   alert anywhere), and the median delay in events from s to the first alert.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from recsys_ebm.anomaly.stream import (
    PopularitySurprisal,
    SequenceSurprisal,
    UserSurprisal,
    Watchdog,
    first_alert,
    stream_energies,
    stream_max,
)
from recsys_ebm.data.interactions import Interactions
from recsys_ebm.data.sequences import Sequences
from recsys_ebm.experiments import tuning

logger = logging.getLogger(__name__)

INJECTIONS = ("takeover", "bot", "burst", "push")


@dataclasses.dataclass(frozen=True, eq=False)
class StreamData:
    """Prefix histories, genuine tails, and the calibration / test users (rows of both)."""

    prefixes: Sequences
    tails: Sequences
    calibration: np.ndarray
    test: np.ndarray
    counts: np.ndarray  # (n_items,) events per item in the prefixes


def stream_data(interactions: Interactions, tail: int = 20, seed: int = 0) -> StreamData:
    """Split every long enough user's sequence into a prefix and a held-out tail (module doc)."""
    full = interactions.sequences()
    users = np.flatnonzero(full.lengths >= tail + 10)
    seqs = full.take(users)
    keep = np.ones(len(seqs.items), dtype=bool)
    ends = seqs.indptr[1:]
    for offset in range(1, tail + 1):
        keep[ends - offset] = False
    prefix_len, tail_len = seqs.lengths - tail, np.full(len(seqs), tail)
    prefixes = Sequences(np.concatenate(([0], np.cumsum(prefix_len))), seqs.items[keep],
                         seqs.timestamps[keep], seqs.n_items)
    tails = Sequences(np.concatenate(([0], np.cumsum(tail_len))), seqs.items[~keep],
                      seqs.timestamps[~keep], seqs.n_items)
    order = np.random.default_rng(seed).permutation(len(seqs))
    half = len(order) // 2
    counts = np.bincount(prefixes.items, minlength=seqs.n_items).astype(np.float64)
    return StreamData(prefixes, tails, np.sort(order[:half]), np.sort(order[half:]), counts)


def fit_detector(name: str, data: StreamData, options: dict | None = None):
    """A surprisal of ``name`` (a registered model, or ``popularity``) fitted on the prefixes."""
    popularity = PopularitySurprisal(data.counts)
    if name == "popularity":
        return popularity
    model = tuning.build_model(name, options or {})
    csr = data.prefixes.to_csr()
    if model.uses_order:
        model.fit(csr, sequences=data.prefixes, show_progress=False)
        return SequenceSurprisal(model, popularity)
    model.fit(csr, show_progress=False)
    return UserSurprisal(model, popularity)


def inject(kind: str, data: StreamData, rng: np.random.Generator) -> tuple[Sequences, np.ndarray]:
    """Attacked tails of the test users and each stream's switch point."""
    tails, n_items = data.tails.take(data.test), data.tails.n_items
    prefixes = data.prefixes.take(data.test)
    length = int(tails.lengths[0])
    switch = rng.integers(2, length // 2 + 1, size=len(tails))
    p_pop = data.counts / data.counts.sum()
    target = int(np.argsort(data.counts)[-len(data.counts) // 10])  # a 90th-percentile item
    rows, stamps = [], []
    for r in range(len(tails)):
        mine, s = list(tails.row(r)), int(switch[r])
        have = set(prefixes.row(r)) | set(mine[:s])
        if kind == "takeover":
            j = int(rng.integers(0, len(tails) - 1))
            other = tails.row(j + (j >= r))
            new = [i for i in other if i not in have][: length - s]
        elif kind == "push":
            new = [target, *[i for i in mine[s:] if i != target]][: length - s] if target not in have else mine[s:]
        else:
            p = np.full(n_items, 1.0 / n_items) if kind == "bot" else p_pop.copy()
            p[list(have)] = 0.0
            new = list(rng.choice(n_items, size=length - s, replace=False, p=p / p.sum()))
        row = mine[:s] + new
        t = tails.timestamps[tails.indptr[r]:tails.indptr[r + 1]]
        later = [int(t[s - 1]) + j + 1 for j in range(len(new))] if kind == "burst" else list(t[s:s + len(new)])
        rows.append(row)
        stamps.append(list(t[:s]) + later)
    return Sequences.from_lists(rows, n_items, stamps), switch


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of an attacked stream > score of a genuine one), ties counted 1/2."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([positive, negative]))
    n_p, n_n = len(positive), len(negative)
    return float((ranks[:n_p].sum() - n_p * (n_p + 1) / 2) / (n_p * n_n))


def evaluate_detector(surprisal, data: StreamData, watchdog: Watchdog, fpr: float, seed: int) -> dict:
    """Calibrate ``watchdog`` on the calibration tails, then score every injection (module doc)."""
    users = np.full(len(data.tails), -1, dtype=np.int64)
    if isinstance(surprisal, UserSurprisal):
        users = np.arange(len(data.tails))  # the prefixes' rows are the fitted users
    cal = data.tails.take(data.calibration)
    cal_e = stream_energies(surprisal, data.prefixes.take(data.calibration), users[data.calibration], cal)
    dog = watchdog.calibrated(cal_e, cal.indptr, fpr)
    genuine = data.tails.take(data.test)
    start = data.prefixes.take(data.test)
    gen_values = dog.values(stream_energies(surprisal, start, users[data.test], genuine), genuine.indptr)
    out = {"threshold": dog.threshold, "mu": dog.mu,
           "fpr_achieved": float(np.mean(stream_max(gen_values, genuine.indptr) > dog.threshold))}
    for kind in INJECTIONS:
        attacked, switch = inject(kind, data, np.random.default_rng(seed + INJECTIONS.index(kind)))
        values = dog.values(stream_energies(surprisal, start, users[data.test], attacked), attacked.indptr)
        delay = first_alert(values, attacked.indptr, dog.threshold, switch)
        out[kind] = {"auc": roc_auc(stream_max(values, attacked.indptr, switch),
                                    stream_max(gen_values, genuine.indptr, switch)),
                     "detection_rate": float(np.mean(delay >= 0)),
                     "median_delay": float(np.median(delay[delay >= 0])) if (delay >= 0).any() else None}
    return out


def run_stream_evaluation(interactions: Interactions, detectors: dict[str, dict], fpr: float = 0.01,
                          statistics: tuple[str, ...] = ("window", "cusum"), window: int = 5,
                          seed: int = 0) -> dict:
    """Every detector (name -> options) under every statistic: the document of the report."""
    data = stream_data(interactions, seed=seed)
    results: dict[str, dict] = {}
    for name, options in detectors.items():
        surprisal = fit_detector(name, data, options)
        for statistic in statistics:
            key = f"{name}/{statistic}"
            results[key] = evaluate_detector(surprisal, data, Watchdog(statistic, window), fpr, seed)
            logger.info("stream %s: %s", key, results[key])
    return {"fpr": fpr, "window": window, "n_calibration": int(len(data.calibration)),
            "n_test": int(len(data.test)), "tail": int(data.tails.lengths[0]), "results": results}


def write_stream_report(dataset, detectors: dict[str, dict], output_dir, fpr: float = 0.01,
                        seed: int = 0):
    """Run :func:`run_stream_evaluation` on a loaded dataset (users with < 5 interactions
    dropped, as in every protocol) and write ``<output_dir>/<dataset>/stream.{md,json}``.

    Returns the Markdown page's path and the document."""
    import json
    from pathlib import Path

    from recsys_ebm.data.split import filter_min_interactions
    from recsys_ebm.io import atomic_write_bytes

    interactions = Interactions.from_frame(filter_min_interactions(dataset.ratings, 5))
    document = run_stream_evaluation(interactions, detectors, fpr=fpr, seed=seed)
    document["dataset"] = dataset.name
    document["detectors"] = detectors
    folder = Path(output_dir) / dataset.name
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / "stream.json", (json.dumps(document, indent=1) + "\n").encode())
    atomic_write_bytes(folder / "stream.md", render_stream_report(document, dataset.name).encode())
    for name in ("stream.json", "stream.md"):
        (folder / name).chmod(0o644)
    return folder / "stream.md", document


def stream_metrics(document: dict) -> dict[str, float]:
    """The document's numbers as flat metric names: ``<detector>.<statistic>.<injection>.auc``
    (and ``detection_rate``, ``median_delay``), ``<detector>.<statistic>.fpr_achieved``."""
    metrics: dict[str, float] = {}
    for key, result in document["results"].items():
        prefix = key.replace("/", ".")
        metrics[f"{prefix}.fpr_achieved"] = result["fpr_achieved"]
        for kind in INJECTIONS:
            for name in ("auc", "detection_rate", "median_delay"):
                if result[kind][name] is not None:
                    metrics[f"{prefix}.{kind}.{name}"] = result[kind][name]
    return metrics


def render_stream_report(document: dict, title: str) -> str:
    """reports/<dataset>/stream.md from the document of :func:`run_stream_evaluation`."""
    out = [f"# {title}: streaming energy watchdog", "",
           f"Held-out genuine tails of {document['tail']} events; {document['n_calibration']} calibration "
           f"and {document['n_test']} test users; threshold for a stream-level FPR of {document['fpr']:.0%} "
           f"(window statistic: mean energy of the last {document['window']} events; CUSUM: "
           "max(0, S + e - mu - 0.5)). Protocol: `recsys_ebm/experiments/stream_eval.py`.", "",
           "| detector / statistic | FPR achieved | " + " | ".join(
               f"{k} AUC | {k} detected | {k} median delay" for k in INJECTIONS) + " |",
           "|---|---|" + "---|---|---|" * len(INJECTIONS)]
    for key, r in document["results"].items():
        cells = []
        for kind in INJECTIONS:
            delay = r[kind]["median_delay"]
            cells += [f"{r[kind]['auc']:.3f}", f"{r[kind]['detection_rate']:.3f}",
                      "-" if delay is None else f"{delay:g}"]
        out.append(f"| `{key}` | {r['fpr_achieved']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"

