"""End to end through the CLI on the real ML-100K copy, logging to a real MLflow store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from recsys_ebm.cli import main
from recsys_ebm.models import load_model

FAST = ["--set", "epochs=4", "--set", "patience=2", "--set", "lr=0.01", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, movielens_dir):
    """One short `recsys-ebm train` run shared by the tests below."""
    tmp = tmp_path_factory.mktemp("train")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    out = tmp / "model"
    argv = ["train", "--data-dir", str(movielens_dir), "--tracking-uri", uri,
            "--experiment", "e2e", "--output-dir", str(out), *FAST]
    import io
    from contextlib import redirect_stdout

    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = main(argv)
    return {"code": code, "stdout": buffer.getvalue(), "uri": uri, "out": out, "tmp": tmp,
            "data": movielens_dir}


def test_train_prints_metric_table_and_saves_model(trained):
    assert trained["code"] == 0
    assert "ndcg" in trained["stdout"] and "recall" in trained["stdout"]
    model = load_model(trained["out"])
    # every user is in train; items whose only ratings went to test are not in the model
    u_data = pd.read_csv(Path(trained["data"]) / "ml-100k" / "u.data", sep="\t", header=None)
    assert model.n_users == 943 and len(model.meta["user_ids"]) == 943
    assert len(model.meta["item_ids"]) == model.n_items
    assert set(model.meta["item_ids"]) <= set(u_data[1].tolist())
    assert u_data[1].nunique() == 1682 and model.n_items == 1656  # 26 items are only in test
    # the seen set saved with the model is the training split: 80,367 of the 100,000 ratings
    assert model.seen_items.shape == (943, 1656) and model.seen_items.nnz == 80_367
    ids, scores = model.recommend(np.arange(3), k=10)
    assert ids.shape == (3, 10) and np.all(np.diff(scores, axis=1) <= 0)


def test_train_logs_params_metrics_and_artifacts_to_mlflow(trained):
    client = MlflowClient(trained["uri"])
    experiment = client.get_experiment_by_name("e2e")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model"] == "dpebm" and params["protocol"] == "random"
    assert params["config.epochs"] == "4" and params["config.user_model"] == "free"
    assert params["dataset"] == "ml-100k" and len(params["dataset_checksum"]) == 64
    assert "git_commit" in run.data.tags
    history = client.get_metric_history(run.info.run_id, "select_val_ndcg_at_10")
    assert [m.step for m in history] == list(range(1, len(history) + 1)) and len(history) >= 2
    ndcg = run.data.metrics["test_ndcg_at_10"]
    assert 0.25 < ndcg < 0.6  # 4 epochs; popularity alone gives about 0.21
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model", "test_metrics.json", "top10_sample.csv"} <= artifacts
    local = client.download_artifacts(run.info.run_id, "top10_sample.csv", str(trained["tmp"]))
    sample = pd.read_csv(local)
    assert sample["title"].notna().all() and set(sample["rank"]) == set(range(1, 11))
    model_files = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/config.json", "model/weights.pt"} <= model_files


def test_recommend_command_uses_raw_ids(trained, capsys):
    code = main(["recommend", "--model-path", str(trained["out"]), "--user", "1", "--user", "2",
                 "--k", "5"])
    out = capsys.readouterr().out
    assert code == 0
    lines = [line for line in out.splitlines() if line.startswith("user ")]
    assert [line.split(":")[0] for line in lines] == ["user 1", "user 2"]
    assert all(line.count("(") == 5 for line in lines)


def _recommended(out: str, label: str) -> list[int]:
    line = next(line for line in out.splitlines() if line.startswith(label + ":"))
    return [int(part.split(" (")[0]) for part in line.split(": ", 1)[1].split(", ")]


def test_recommend_leaves_out_the_users_training_items(trained, capsys, movielens_dir):
    from recsys_ebm.experiments import runner

    dataset = runner.load_dataset("movielens", "100k", str(movielens_dir), download=False)
    split = runner.make_split(dataset.ratings, "random", seed=0)
    train_items = set(split.train.loc[split.train["user_id"] == 1, "item_id"])
    model = load_model(trained["out"])
    seen = model.seen_items  # saved with the model: the interactions it was fitted on
    assert seen.shape == (model.n_users, model.n_items) and seen.nnz == len(split.train)
    assert main(["recommend", "--model-path", str(trained["out"]), "--user", "1", "--k", "50"]) == 0
    filtered = _recommended(capsys.readouterr().out, "user 1")
    assert len(filtered) == 50 and not set(filtered) & train_items
    assert main(["recommend", "--model-path", str(trained["out"]), "--user", "1", "--k", "50",
                 "--include-seen"]) == 0
    unfiltered = _recommended(capsys.readouterr().out, "user 1")
    assert set(unfiltered) & train_items  # a trained user's own items rank high when not left out


def test_recommend_for_a_new_users_history(trained, capsys):
    history = [50, 172, 181, 174]  # Star Wars, Empire Strikes Back, Return of the Jedi, Raiders
    code = main(["recommend", "--model-path", str(trained["out"]), "--history",
                 ",".join(map(str, history)), "--k", "10"])
    assert code == 0
    items = _recommended(capsys.readouterr().out, "new user")
    assert len(items) == 10 and not set(items) & set(history)


@pytest.mark.parametrize(("history", "message"), [("50,999999", "999999"), ("50:x", "must be a number"),
                                                   (",", "empty"), ("50,172,50", "50 more than once")])
def test_recommend_bad_history_is_a_clear_error(trained, caplog, history, message):
    code = main(["recommend", "--model-path", str(trained["out"]), "--history", history])
    assert code == 2 and message in caplog.text


def _legacy_copy(trained_dir: Path, target: Path, with_seen_file: bool) -> None:
    """A model directory as train wrote it before the seen set was part of the model files:
    no seen tensors in weights.pt, the training pattern (or nothing) in seen_items.npz."""
    import shutil

    import torch

    from recsys_ebm.io import MANIFEST_FILE, WEIGHTS_FILE, save_seen_items

    shutil.copytree(trained_dir, target)
    (target / MANIFEST_FILE).unlink()  # those versions wrote no manifest either
    tensors = torch.load(target / WEIGHTS_FILE, weights_only=True)
    seen = load_model(trained_dir).seen_items
    torch.save({k: v for k, v in tensors.items() if not k.startswith("seen.")}, target / WEIGHTS_FILE)
    if with_seen_file:
        save_seen_items(target, seen)


def test_models_saved_with_a_seen_file_still_leave_it_out(trained, tmp_path, capsys):
    old = tmp_path / "old-model"
    _legacy_copy(trained["out"], old, with_seen_file=True)
    assert load_model(old).seen_items.nnz == load_model(trained["out"]).seen_items.nnz
    for path in (trained["out"], old):
        assert main(["recommend", "--model-path", str(path), "--user", "1", "--k", "20"]) == 0
    new_list, old_list = (_recommended(block, "user 1") for block in capsys.readouterr().out.split("\n")[:2])
    assert new_list == old_list and len(new_list) == 20


def test_recommend_without_any_seen_set_warns_and_still_serves(trained, tmp_path, capsys, caplog):
    old = tmp_path / "old-model"
    _legacy_copy(trained["out"], old, with_seen_file=False)
    assert load_model(old).seen_items is None
    assert main(["recommend", "--model-path", str(old), "--user", "1", "--k", "5"]) == 0
    assert len(_recommended(capsys.readouterr().out, "user 1")) == 5
    assert "are not left out" in caplog.text


def test_recommend_unknown_user_is_a_clear_error(trained, caplog):
    code = main(["recommend", "--model-path", str(trained["out"]), "--user", "999999"])
    assert code == 2
    assert "999999" in caplog.text


def test_evaluate_writes_json(tmp_path, movielens_dir):
    path = tmp_path / "reports" / "eval.json"
    code = main(["evaluate", "--data-dir", str(movielens_dir), "--no-mlflow", "--json", str(path),
                 "--protocol", "loo", *FAST])
    assert code == 0
    document = json.loads(path.read_text())
    assert (document["model"], document["dataset"], document["protocol"]) == ("dpebm", "ml-100k", "loo")
    metrics = document["metrics"]
    # leave-one-out: one test item per user; for 3 users that latest item is rated by nobody else
    assert metrics["n_users"] == 940
    assert 0 <= metrics["ndcg@10"] <= metrics["hitrate@10"] <= 1


def test_custom_csv_dataset_and_strong_generalization(tmp_path, movielens_dir, capsys):
    frame = pd.read_csv(movielens_dir / "ml-100k" / "u.data", sep="\t",
                        names=["uid", "iid", "stars", "ts"])
    path = tmp_path / "log.csv"
    frame.to_csv(path, index=False)
    out = tmp_path / "eval.json"
    code = main(["evaluate", "--dataset", str(path), "--user-col", "uid", "--item-col", "iid",
                 "--rating-col", "stars", "--timestamp-col", "ts", "--protocol", "strong",
                 "--no-mlflow", "--json", str(out), *FAST])
    assert code == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["n_users"] == 94  # 10% of 943 users held out and folded in
    assert metrics["recall@20"] > 0.05


def test_missing_local_copy_names_the_folder(tmp_path, caplog):
    code = main(["train", "--data-dir", str(tmp_path / "empty"), "--no-download", "--no-mlflow"])
    assert code == 2
    assert str(tmp_path / "empty" / "ml-100k") in caplog.text


def test_bad_option_names_the_field(movielens_dir, caplog):
    code = main(["train", "--data-dir", str(movielens_dir), "--no-mlflow", "--set", "dimm=3"])
    assert code == 2
    assert "dimm" in caplog.text


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("recsys-ebm")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    assert "train" in result.stdout and "evaluate" in result.stdout


def test_crbm_official_folds_json(tmp_path, movielens_dir):
    path = tmp_path / "crbm.json"
    code = main(["evaluate", "--model", "crbm", "--protocol", "official-folds", "--data-dir",
                 str(movielens_dir), "--no-mlflow", "--set", "epochs=2", "--quiet", "--json", str(path)])
    assert code == 0
    document = json.loads(path.read_text())
    assert [f["fold"] for f in document["folds"]] == ["u1", "u2", "u3", "u4", "u5"]
    assert all(f["n_test"] == 20000 for f in document["folds"])
    rmses = np.array([f["rmse"] for f in document["folds"]])
    assert document["rmse"] == pytest.approx(rmses.mean()) and document["rmse_std"] == pytest.approx(rmses.std())
    assert 0.85 < document["rmse"] < 1.1 and 0.6 < document["mae"] < document["rmse"]


def test_rating_protocol_rejects_implicit_models(movielens_dir, caplog):
    code = main(["evaluate", "--model", "ease", "--protocol", "official-folds", "--data-dir",
                 str(movielens_dir), "--no-mlflow"])
    assert code == 2 and "rating model" in caplog.text


def test_train_crbm_fits_on_ratings(tmp_path, movielens_dir, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["train", "--model", "crbm", "--data-dir", str(movielens_dir), "--tracking-uri", uri,
                 "--output-dir", str(tmp_path / "crbm"), "--set", "epochs=2", "--quiet"])
    assert code == 0 and "ndcg" in capsys.readouterr().out
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("recsys_ebm").experiment_id])
    assert {"select_val_rmse", "test_ndcg_at_10"} <= set(run.data.metrics)
    model = load_model(tmp_path / "crbm")
    ratings = model.predict(np.array([0, 1]), np.array([0, 5]))
    assert np.all((ratings >= 1) & (ratings <= 5))


def test_recommend_from_a_history_file(trained, tmp_path, capsys):
    history = tmp_path / "history.txt"
    history.write_text("50\n172\n\n181\n174\n")
    assert main(["recommend", "--model-path", str(trained["out"]), "--history-file", str(history),
                 "--k", "10"]) == 0
    from_file = _recommended(capsys.readouterr().out, "new user")
    assert main(["recommend", "--model-path", str(trained["out"]), "--history", "50,172,181,174",
                 "--k", "10"]) == 0
    assert from_file == _recommended(capsys.readouterr().out, "new user") and len(from_file) == 10


@pytest.mark.parametrize(("argv", "message"), [
    (["--user", "abc"], "--user: ids must be of the model's id type"),
    (["--history-file", "/nonexistent/h.txt"], "no such file"),
    (["--history", "50", "--history-file", "x"], "not both"),
    (["--user", "1", "--filter-items", "99999999"], "99999999"),
])
def test_recommend_bad_arguments_are_clear_errors(trained, caplog, argv, message):
    assert main(["recommend", "--model-path", str(trained["out"]), *argv]) == 2
    assert message in caplog.text


def test_export_refuses_training_options_for_a_saved_model(trained, tmp_path, caplog, movielens_dir):
    code = main(["export", "--data-dir", str(movielens_dir), "--model-path", str(trained["out"]),
                 "--set", "bogus=1", "--output", str(tmp_path / "x.parquet"), "--no-mlflow", "--quiet"])
    assert code == 2 and "configure a model to train" in caplog.text
    assert not (tmp_path / "x.parquet").exists()


def test_serving_prints_no_faiss_loader_noise(trained):
    """faiss logs each optional CPU build it cannot import; a user saw those lines on every export."""
    done = subprocess.run([sys.executable, "-c", "import sys; from recsys_ebm.cli import main; sys.exit(main())",
                           "recommend", "--model-path", str(trained["out"]), "--user", "1", "--index", "flat"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "user 1:" in done.stdout
    assert "ModuleNotFoundError" not in done.stderr and "Could not load library" not in done.stderr


def test_production_fit_uses_every_interaction_and_is_served_without_retraining(tmp_path, movielens_dir):
    out = tmp_path / "production"
    code = main(["train", "--data-dir", str(movielens_dir), "--model", "ease", "--fit", "all",
                 "--no-mlflow", "--quiet", "--output-dir", str(out)])
    assert code == 0
    model = load_model(out)
    # every user, every item, every rating of u.data: nothing the split held out is recommendable
    assert (model.n_users, model.n_items) == (943, 1682) and model.seen_items.nnz == 100_000
    assert model.meta["fit"] == "all"
    export = tmp_path / "top.parquet"
    assert main(["export", "--data-dir", str(movielens_dir), "--model-path", str(out), "--k", "5",
                 "--output", str(export), "--no-mlflow", "--quiet"]) == 0
    frame = pd.read_parquet(export)
    u_data = pd.read_csv(Path(movielens_dir) / "ml-100k" / "u.data", sep="\t", header=None,
                         names=["user_id", "item_id", "rating", "timestamp"])
    rated = set(zip(u_data.user_id, u_data.item_id, strict=True))
    assert frame.user_id.nunique() == 943
    assert not any((u, i) in rated for u, i in zip(frame.user_id, frame.item_id, strict=True))
