"""The streaming watchdog (anomaly/stream.py, experiments/monitor.py, stream_eval.py): the
statistics and calibration by hand, and ``recsys-ebm monitor`` end to end on ML-100K streams
held out from a markov model, with a bot stream injected."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys_ebm.anomaly.stream import Watchdog, first_alert, stream_max
from recsys_ebm.experiments.stream_eval import roc_auc


def test_window_and_cusum_statistics_by_hand():
    energies = np.array([1.0, 3.0, 5.0, 2.0, 4.0])
    indptr = np.array([0, 3, 5])
    window = Watchdog("window", window=2).values(energies, indptr)
    assert window.tolist() == [1.0, 2.0, 4.0, 2.0, 3.0]
    cusum = Watchdog("cusum", mu=2.0, slack=0.5).values(energies, indptr)
    assert cusum.tolist() == [0.0, 0.5, 3.0, 0.0, 1.5]
    assert stream_max(window, indptr).tolist() == [4.0, 3.0]
    assert first_alert(window, indptr, 2.5, np.array([1, 0])).tolist() == [1, 1]
    dog = Watchdog("window", window=1).calibrated(energies, indptr, fpr=0.5)
    assert dog.mu == 3.0 and dog.threshold == 5.0  # the higher median of the stream maxima {5, 4}
    assert roc_auc(np.array([3.0, 4.0]), np.array([1.0, 3.0])) == pytest.approx(0.875)


def test_monitor_cli_alerts_a_bot_and_spares_genuine_streams(tmp_path, movielens_dir):
    from recsys_ebm.cli import main

    ratings = pd.read_csv(movielens_dir / "ml-100k" / "u.data", sep="\t",
                          names=["user_id", "item_id", "rating", "timestamp"])
    ratings = ratings.sort_values(["timestamp", "item_id"], kind="stable")
    tail = ratings.groupby("user_id").tail(6)
    prefix = ratings.drop(tail.index)
    prefix.to_csv(tmp_path / "prefix.csv", index=False)
    assert main(["train", "--dataset", str(tmp_path / "prefix.csv"), "--model", "markov",
                 "--protocol", "loo", "--no-mlflow", "--quiet", "--output-dir", str(tmp_path / "m")]) == 0
    users = np.sort(tail["user_id"].unique())
    calibration, genuine = tail[tail["user_id"].isin(users[::2])], tail[tail["user_id"].isin(users[1::2])]
    rng = np.random.default_rng(0)
    bot = pd.DataFrame({"user_id": 99999, "item_id": rng.choice(ratings["item_id"].unique(), 12, replace=False),
                        "timestamp": 893_000_000 + np.arange(12)})
    calibration.to_csv(tmp_path / "calibration.csv", index=False)
    pd.concat([genuine, bot]).to_csv(tmp_path / "events.csv", index=False)
    out = tmp_path / "alerts.parquet"
    assert main(["monitor", "--model-path", str(tmp_path / "m"), "--events", str(tmp_path / "events.csv"),
                 "--calibration", str(tmp_path / "calibration.csv"), "--fpr", "0.05", "--statistic", "cusum",
                 "--output", str(out)]) == 0
    alerts = pd.read_parquet(out)
    assert 99999 in set(alerts["user_id"])  # the unseen bot user starts from popularity and is caught
    share = alerts.loc[alerts["user_id"] != 99999, "user_id"].nunique() / genuine["user_id"].nunique()
    assert share < 0.15  # genuine streams alerted: near the calibrated 5%
    assert set(alerts.columns) >= {"user_id", "item_id", "timestamp", "energy", "statistic", "threshold"}


def test_stream_report_cli_writes_the_page_and_logs_every_cell_to_mlflow(tmp_path, movielens_dir):
    import json

    from mlflow.tracking import MlflowClient

    from recsys_ebm.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["stream-report", "--dataset", "movielens", "--variant", "100k", "--data-dir",
                 str(movielens_dir), "--no-download", "--detectors", "popularity,markov", "--quiet",
                 "--output-dir", str(tmp_path / "reports"), "--tracking-uri", uri,
                 "--experiment", "stream"]) == 0
    folder = tmp_path / "reports" / "ml-100k"
    document = json.loads((folder / "stream.json").read_text())
    assert set(document["results"]) == {"popularity/window", "popularity/cusum", "markov/window",
                                        "markov/cusum"}
    assert "| `markov/cusum` |" in (folder / "stream.md").read_text()
    bot = document["results"]["popularity/window"]["bot"]["auc"]
    assert bot > 0.9  # uniform random items are improbable under popularity (0.96 in the report)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("stream").experiment_id])
    assert run.data.metrics["popularity.window.bot.auc"] == pytest.approx(bot)
    assert run.data.metrics["markov.cusum.fpr_achieved"] == document["results"]["markov/cusum"]["fpr_achieved"]
    assert run.data.params["stream.detectors"] == "popularity,markov" and run.data.params["dataset"] == "ml-100k"
    from recsys_ebm.experiments.stream_eval import stream_metrics

    expected = stream_metrics(document)
    assert set(run.data.metrics) == set(expected) and len(expected) >= 4 * (1 + 4 * 2)
    assert all(run.data.metrics[k] == pytest.approx(v) for k, v in expected.items())
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "stream.json" in artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "report")} == {"report/stream.md"}
