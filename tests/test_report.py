"""The comparison report: grid handling, verdict arithmetic, and one small end-to-end run on
ML-100K through the CLI (2-epoch EBM, pop, a 2-point item-kNN grid, 2 seeds) logging to a real
MLflow store, checking the files, the numbers against an independent recomputation, the
Markdown against the JSON, and the parent/child run structure."""

from __future__ import annotations

import io
import json
import math
import re
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from recsys_ebm.cli import main
from recsys_ebm.evaluation.beyond import beyond_accuracy, item_popularity
from recsys_ebm.evaluation.evaluate import evaluate_ranking
from recsys_ebm.experiments import runner
from recsys_ebm.experiments.report import compare
from recsys_ebm.experiments.reporting import ReportConfig, clean_json
from recsys_ebm.experiments.tuning import candidate_options, load_grids, tuned_defaults

SEEDS = (0, 1)
MODELS = ("dpebm", "pop", "itemknn")


# ---------------------------------------------------------------- units


def test_load_grids_is_the_cartesian_product_in_key_order(tmp_path):
    path = tmp_path / "grids.toml"
    path.write_text("[grid.pop]\n\n[grid.als]\nfactors = [8, 16]\nalpha = [1.0, 3.0]\niterations = 5\n")
    grids = load_grids(path)
    assert grids["pop"] == [{}]
    assert grids["als"] == [
        {"factors": 8, "alpha": 1.0, "iterations": 5}, {"factors": 8, "alpha": 3.0, "iterations": 5},
        {"factors": 16, "alpha": 1.0, "iterations": 5}, {"factors": 16, "alpha": 3.0, "iterations": 5},
    ]
    path.write_text("[grid.als]\nfactors = []\n")
    with pytest.raises(ValueError, match="empty list"):
        load_grids(path)


def test_candidates_merge_defaults_grid_and_overrides(tmp_path):
    (tmp_path / "ease.toml").write_text("[model]\nl2 = 500.0\nseed = 0\n")
    grids = {"ease": [{"l2": 100.0}, {"l2": 200.0}]}
    assert candidate_options("ease", grids["ease"], {}, tmp_path) == [{"l2": 100.0, "seed": 0},
                                                                      {"l2": 200.0, "seed": 0}]
    # an override that fixes the grid's only key collapses the grid to one point
    assert candidate_options("ease", grids["ease"], {"l2": 7.0}, tmp_path) == [{"l2": 7.0, "seed": 0}]
    # no grid (use_grids=False, or none declared): the tuned defaults alone
    assert candidate_options("ease", None, {}, tmp_path) == [{"l2": 500.0, "seed": 0}]
    with pytest.raises(ValueError, match="unknown option"):
        candidate_options("ease", [{"factors": 3}], {"l2": 7.0}, tmp_path)
    # without a folder: the shipped pipelines/ease.toml
    assert candidate_options("ease", None) == [tuned_defaults("ease")] and tuned_defaults("ease")


@pytest.mark.parametrize("kwargs, message", [
    ({"protocol": "bogus"}, "protocol"),
    ({"seeds": ()}, "seeds"),
    ({"seeds": (1, 1)}, "distinct"),
    ({"ks": (5, 10)}, "include"),
    ({"temperatures": (-1.0,)}, "temperatures"),
])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReportConfig(**kwargs)
    with pytest.raises(KeyError, match="unknown model"):
        ReportConfig(models=("nope",))


def test_compare_reports_difference_ci_and_winner():
    users = np.arange(4)
    sections = {"a": {"mean": {"ndcg@10": 0.5, "recall@20": 0.4}},
                "b": {"mean": {"ndcg@10": 0.4, "recall@20": 0.5}}}
    arrays = {"a": {"users": users, "ndcg@10": np.array([0.6, 0.5, 0.4, 0.5]),
                    "recall@20": np.array([0.4, 0.4, 0.4, 0.4])},
              "b": {"users": users, "ndcg@10": np.array([0.5, 0.4, 0.3, 0.4]),
                    "recall@20": np.array([0.5, 0.5, 0.5, 0.5])}}
    rows = {r["metric"]: r for r in compare("a", sections, arrays)}
    assert rows["ndcg@10"]["winner"] == "a" and rows["ndcg@10"]["difference"] == pytest.approx(0.1)
    assert rows["ndcg@10"]["relative"] == pytest.approx(0.25)
    # every user differs by exactly 0.1: zero-width interval, significant
    assert rows["ndcg@10"]["ci95"] == pytest.approx([0.1, 0.1]) and rows["ndcg@10"]["significant"]
    assert rows["recall@20"]["winner"] == "b" and rows["recall@20"]["difference"] == pytest.approx(-0.1)


def test_clean_makes_strict_json():
    cleaned = clean_json({"a": np.float32(1.5), "b": float("nan"), "c": (np.int64(2), np.inf), "d": np.bool_(True)})
    assert cleaned == {"a": 1.5, "b": None, "c": [2, None], "d": True}
    json.dumps(cleaned, allow_nan=False)


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def report(tmp_path_factory, movielens_dir):
    tmp = tmp_path_factory.mktemp("report")
    grids = tmp / "grids.toml"
    grids.write_text("[grid.itemknn]\nn_neighbors = [5, 200]\n")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    argv = ["report", "--data-dir", str(movielens_dir), "--no-download", "--models", ",".join(MODELS),
            "--seeds", ",".join(map(str, SEEDS)), "--grids", str(grids),
            "--set", "dpebm.epochs=2", "--set", "dpebm.dim=16", "--set", "dpebm.lr=0.01",
            "--temperatures", "0,0.5,2", "--output-dir", str(tmp / "reports"),
            "--tracking-uri", uri, "--experiment", "report-test", "--quiet", "--log-level", "WARNING"]
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(argv)
    folder = tmp / "reports" / "ml-100k"
    return {"code": code, "stdout": out.getvalue(), "folder": folder, "uri": uri,
            "doc": json.loads((folder / "random.json").read_text()),
            "md": (folder / "random.md").read_text(), "movielens_dir": movielens_dir}


def test_report_writes_markdown_json_and_pngs(report):
    assert report["code"] == 0
    assert "report written to" in report["stdout"]
    folder = report["folder"]
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["random-energies.png", "random-metrics-vs-k.png", "random-temperature.png",
                     "random.json", "random.md"]
    for png in folder.glob("*.png"):
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(data) < 300_000
        assert f"]({png.name})" in report["md"]  # linked from the page
    json.loads((folder / "random.json").read_text(), parse_constant=lambda c: pytest.fail(c))


def test_report_json_holds_tuning_seeds_and_consistent_means(report):
    doc = report["doc"]
    assert list(doc["models"]) == list(MODELS) and doc["reference"] == "dpebm"
    assert doc["dataset"]["n_users"] == 943 and doc["protocol"]["sampled_negatives"] is False
    for section in doc["models"].values():
        assert len(section["per_seed"]) == len(SEEDS)
        for key in ("ndcg@10", "recall@20", "novelty@10", "diversity@10", "personalization@10"):
            values = [row[key] for row in section["per_seed"]]
            assert section["mean"][key] == pytest.approx(np.mean(values))
            assert section["std"][key] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    pop = doc["models"]["pop"]
    assert pop["deterministic"] and pop["std"]["ndcg@10"] == 0.0
    # dpebm: 2 epochs and different seeds give different models
    assert doc["models"]["dpebm"]["std"]["ndcg@10"] > 0
    assert doc["models"]["dpebm"]["refit_epochs"] == doc["models"]["dpebm"]["grid"][0]["best_epoch"]
    knn = doc["models"]["itemknn"]
    assert [g["options"]["n_neighbors"] for g in knn["grid"]] == [5, 200]
    best = max(knn["grid"], key=lambda g: g["val_ndcg@10"])
    assert knn["chosen"]["n_neighbors"] == best["options"]["n_neighbors"]


def test_report_numbers_match_an_independent_recomputation(report):
    doc = report["doc"]
    dataset = runner.load_dataset("movielens", "100k", str(report["movielens_dir"]), download=False)
    data = runner.prepare(runner.make_split(dataset.ratings, "random", seed=0), "random")
    knn = runner.build_model("itemknn", {"n_neighbors": doc["models"]["itemknn"]["chosen"]["n_neighbors"]})
    knn.fit(data.train.user_items, show_progress=False)
    result = evaluate_ranking(knn, data.train.user_items, data.test.user_items, (10, 20))
    mean = doc["models"]["itemknn"]["mean"]
    assert mean["ndcg@10"] == pytest.approx(result.summary["ndcg@10"])
    assert mean["recall@20"] == pytest.approx(result.summary["recall@20"])
    beyond = beyond_accuracy(result.recommendations, data.train.n_items, (10,),
                             popularity=item_popularity(data.train.user_items))
    for key in ("coverage@10", "gini@10", "novelty@10", "personalization@10"):
        assert mean[key] == pytest.approx(beyond[key])
    # the verdict's difference is the difference of the means
    row = next(r for r in doc["comparison"] if r["model"] == "itemknn" and r["metric"] == "ndcg@10")
    assert row["difference"] == pytest.approx(doc["models"]["dpebm"]["mean"]["ndcg@10"] - mean["ndcg@10"])


def test_report_ebm_sections(report):
    dpebm = report["doc"]["models"]["dpebm"]
    curve = dpebm["temperature"]
    assert [row["temperature"] for row in curve] == [0.0, 0.5, 2.0]
    # T = 0 is the exact ranking of the seed-0 model: the test NDCG@10 of that seed
    assert curve[0]["ndcg@10"] == pytest.approx(dpebm["per_seed"][0]["ndcg@10"])
    assert curve[0]["coverage@10"] == pytest.approx(dpebm["per_seed"][0]["coverage@10"])
    assert curve[-1]["coverage@10"] >= curve[0]["coverage@10"]
    energies = dpebm["energies"]
    n_test = report["doc"]["dataset"]["n_test"]
    assert sum(energies["positives"]["counts"]) == energies["positives"]["n"] == n_test
    assert sum(energies["random_unseen"]["counts"]) == n_test
    assert len(energies["edges"]) == len(energies["positives"]["counts"]) + 1
    assert 0.0 <= energies["auc"] <= 1.0
    assert "temperature" not in report["doc"]["models"]["pop"]


def _table(markdown: str, header_start: str) -> dict[str, list[str]]:
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = dict(zip(header, cells, strict=True))
    return rows


def test_markdown_numbers_agree_with_json(report):
    doc, md = report["doc"], report["md"]
    rows = _table(md, "| model | NDCG@10 |")
    assert set(rows) == set(MODELS)
    for name, row in rows.items():
        section = doc["models"][name]
        for label, key in (("NDCG@10", "ndcg@10"), ("Recall@20", "recall@20"),
                           ("Novelty@10", "novelty@10"), ("Personalization@10", "personalization@10")):
            mean, std = (float(x) for x in row[label].split("±"))
            assert mean == pytest.approx(section["mean"][key], abs=5e-5)
            assert std == pytest.approx(section["std"][key], abs=5e-5)
    # the verdict names every other model with its NDCG@10 gap
    verdict = md.split("## Verdict")[1].split("## Results")[0]
    for row in doc["comparison"]:
        assert f"`{row['model']}`" in verdict
        assert f"{abs(row['difference']):.4f}" in verdict
    temps = _table(md, "| T | NDCG@10 |")
    for row in doc["models"]["dpebm"]["temperature"]:
        assert float(temps[f"{row['temperature']:g}"]["NDCG@10"]) == pytest.approx(row["ndcg@10"], abs=5e-5)
    assert re.search(r"\*\*no sampled negatives\*\*", md)


def test_mlflow_has_one_parent_with_a_child_per_model(report):
    client = MlflowClient(report["uri"])
    experiment = client.get_experiment_by_name("report-test")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_id == report["doc"]["mlflow"]["parent_run_id"]
    assert parent.info.status == "FINISHED" and parent.data.params["dataset"] == "ml-100k"
    assert sorted(r.info.run_name for r in children) == sorted(MODELS)
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        section = report["doc"]["models"][child.info.run_name]
        assert child.data.metrics["test_ndcg_at_10_mean"] == pytest.approx(section["mean"]["ndcg@10"])
        history = client.get_metric_history(child.info.run_id, "test_ndcg_at_10")
        assert sorted(m.step for m in history) == list(SEEDS)
        assert len(client.get_metric_history(child.info.run_id, "val_ndcg_at_10")) == len(section["grid"])
    artifacts = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"random.md", "random.json", "random-metrics-vs-k.png", "random-temperature.png",
            "random-energies.png"} <= artifacts
    assert math.isfinite(parent.data.metrics["total_seconds"])


# ---------------------------------------------------------------- rating prediction


def test_rating_report_on_official_fold_u1(tmp_path, movielens_dir):
    from recsys_ebm.experiments.report import run_report

    config = ReportConfig(data_dir=str(movielens_dir), download=False, protocol="ratings",
                          rating_folds=(1,), output_dir=str(tmp_path), mlflow=False)
    result = run_report(config)
    doc = json.loads(result.json.read_text())
    bias = doc["models"]["bias"]
    assert [f["fold"] for f in bias["folds"]] == ["u1"] and bias["folds"][0]["n_test"] == 20_000
    assert 0.90 < bias["rmse"] < 1.0 and 0.70 < bias["mae"] < 0.80  # mu + b_u + b_i on ML-100K
    # the scikit-surprise baselines run in the same command, on the same 20,000 rows
    assert list(doc["models"]) == ["bias", "crbm", "surprise-baseline", "surprise-svd",
                                   "surprise-svdpp", "surprise-knnbaseline"]
    rmse = {name: m["rmse"] for name, m in doc["models"].items()}
    assert all(m["folds"][0]["n_test"] == 20_000 for m in doc["models"].values())
    # u1 with surprise defaults (measured once): SVD 0.951; SVD++ and the CRBM below it
    assert rmse["surprise-svd"] == pytest.approx(0.951, abs=0.004)
    assert rmse["surprise-svdpp"] < rmse["surprise-svd"] and rmse["crbm"] < rmse["surprise-svd"]
    assert doc["models"]["surprise-svd"]["options"] == {"verbose": False, "random_state": 0}
    md = result.markdown.read_text()
    table = _table(md, "| model | RMSE |")
    for name in ("bias", "surprise-svdpp"):
        assert float(table[name]["RMSE"].split("±")[0]) == pytest.approx(rmse[name], abs=5e-5)
    assert float(table["bias"]["MAE"].split("±")[0]) == pytest.approx(bias["mae"], abs=5e-5)
    best = min(rmse, key=rmse.get)
    assert f"- Lowest RMSE: `{best}` ({rmse[best]:.4f})." in md
    assert result.plots["folds"].read_bytes()[:4] == b"\x89PNG"


def test_rating_report_without_surprise(monkeypatch, caplog):
    from recsys_ebm.errors import MissingDependencyError
    from recsys_ebm.experiments import rating_report as report

    monkeypatch.setattr(report, "surprise_available", lambda: False)
    monkeypatch.setitem(__import__("sys").modules, "surprise", None)
    assert report.rating_report_models(ReportConfig(protocol="ratings")) == ["bias", "crbm"]
    assert "scikit-surprise is not installed" in caplog.text
    with pytest.raises(MissingDependencyError, match="bench"):
        report.rating_report_models(ReportConfig(protocol="ratings", models=("surprise-svd",)))
    with pytest.raises(ValueError, match="predicts ratings only"):
        ReportConfig(protocol="random", models=("surprise-svd",))


def test_energy_pairs_are_held_out_positives_and_unseen_negatives():
    import pandas as pd

    from recsys_ebm.experiments.report import _context, energy_distributions, energy_pairs

    rng = np.random.default_rng(0)
    pairs = {(u, i) for u in range(30) for i in rng.choice(20, size=8, replace=False)}
    frame = pd.DataFrame(sorted(pairs), columns=["user_id", "item_id"]).assign(rating=1.0, timestamp=0)
    data = runner.prepare(runner.make_split(frame, "random", seed=0), "random")
    ctx = _context(runner.Dataset("toy", frame, None, "0" * 64, "toy"), data)
    n_items = data.train.n_items

    class Encoder:  # E(u, i) = u * n_items + i reveals each pair
        def score(self, users):
            return -(np.asarray(users)[:, None] * n_items + np.arange(n_items)).astype(np.float64)

    users = np.arange(data.test.n_users)
    positives, negatives = (e.astype(np.int64) for e in energy_pairs(Encoder(), "toy", ctx, users, seed=3))
    again = energy_pairs(Encoder(), "toy", ctx, users, seed=3, batch_size=4)
    assert np.array_equal(positives, again[0]) and np.array_equal(negatives, again[1])
    test = data.test.user_items.toarray() > 0
    seen = test | (data.train.user_items.toarray() > 0)
    assert sorted(zip(positives // n_items, positives % n_items, strict=True)) == \
        sorted(zip(*np.nonzero(test), strict=True))
    assert np.array_equal(negatives // n_items, positives // n_items)  # same user per pair
    assert not seen[negatives // n_items, negatives % n_items].any()
    out = energy_distributions(Encoder(), "toy", ctx, users, seed=3, bins=5)
    assert out["positives"]["n"] == out["random_unseen"]["n"] == int(test.sum())
    assert out["positives"]["mean"] == pytest.approx(positives.mean())
    # brute-force AUC: P(E_pos < E_neg) + 1/2 P(tie) over all pairs of the two samples
    diff = positives[:, None] - negatives[None, :]
    assert out["auc"] == pytest.approx(((diff < 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def test_verdict_when_the_reference_wins_states_the_gap_and_its_interval():
    from recsys_ebm.experiments.render import _verdict

    row = {"reference": "dpebm", "model": "als", "metric": "ndcg@10", "reference_value": 0.45,
           "model_value": 0.44, "difference": 0.01, "relative": 0.01 / 0.44, "ci95": [0.002, 0.018],
           "winner": "dpebm", "significant": True}
    document = {"reference": "dpebm", "comparison": [row],
                "models": {"dpebm": {"mean": {"ndcg@10": 0.45}}}}
    (line,) = _verdict(document)
    assert line == ("- **NDCG@10: `dpebm` is best** (0.4500); the strongest other model, `als` (0.4400), "
                    "is 0.0100 lower (2.3% relative to it; paired per-user 95% CI of `dpebm` − `als` "
                    "[0.0020, 0.0180], significant).")
    row.update(ci95=[-0.001, 0.021], significant=False)
    assert _verdict(document)[0].endswith("[-0.0010, 0.0210], not significant).")


# ---------------------------------------------------------------- a user's file


def _users_file(path: Path, with_ratings: bool) -> Path:
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{i}", int(t)) for u in range(40) for t, i in
            enumerate(rng.choice(30, size=int(rng.integers(6, 15)), replace=False))]
    lines = ["user,item,stars,timestamp" if with_ratings else "user,item,timestamp"]
    for u, i, t in rows:
        lines.append(f"{u},{i},{1 + (t * 7 + len(u)) % 5},{t}" if with_ratings else f"{u},{i},{t}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_report_honours_the_column_flags_of_a_users_file(tmp_path):
    csv = _users_file(tmp_path / "clicks.csv", with_ratings=False)
    argv = ["report", "--dataset", str(csv), "--user-col", "user", "--item-col", "item",
            "--rating-col", "", "--models", "pop,itemknn", "--seeds", "0", "--no-grid",
            "--output-dir", str(tmp_path / "out"), "--no-mlflow", "--quiet", "--log-level", "WARNING"]
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(argv)
    assert code == 0 and "report written to" in out.getvalue()
    doc = json.loads((tmp_path / "out" / "clicks" / "random.json").read_text())
    assert doc["dataset"]["n_users"] == 40
    assert doc["dataset"]["n_train"] + doc["dataset"]["n_test"] == len(csv.read_text().splitlines()) - 1
    assert list(doc["models"]) == ["pop", "itemknn"]
    assert "--user-col 'user' --item-col 'item' --rating-col ''" in doc["config"]["command"]


def test_rating_report_on_a_users_file_uses_seeded_folds(tmp_path):
    from recsys_ebm.experiments.report import run_report

    csv = _users_file(tmp_path / "stars.csv", with_ratings=True)
    config = ReportConfig(dataset=str(csv), protocol="ratings", models=("bias",), mlflow=False,
                          reader_options={"user_col": "user", "item_col": "item", "rating_col": "stars"},
                          output_dir=str(tmp_path / "out"))
    doc = run_report(config).document
    bias = doc["models"]["bias"]
    assert doc["protocol"]["folds"] == "kfold" and doc["dataset"]["rating_scale"] == [1.0, 5.0, 1.0]
    assert [f["fold"] for f in bias["folds"]] == [f"fold{k}" for k in range(1, 6)]
    assert sum(f["n_test"] for f in bias["folds"]) == len(csv.read_text().splitlines()) - 1
    assert (tmp_path / "out" / "stars" / "ratings.md").is_file()
