"""`recsys-ebm train` logs an MLflow pyfunc model that serves the toolkit's recommendations:
loaded back in Python and served by a real `mlflow models serve`, its answers are exactly
``model.recommend``'s. Real SQLite stores in tmp_path, real MovieLens 100K."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from contextlib import redirect_stdout
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml
from conftest import free_port, stop_process_group, wait_until_ready
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from recsys_ebm.cli import main
from recsys_ebm.experiments.jobs import saved_id_maps
from recsys_ebm.models import load_model

REPO_ROOT = Path(__file__).resolve().parents[1]
NAME = "recommender"
USERS = ["1", "196", "405", "943"]
HISTORY = ["50", "172", "181", "1"]


def _train(tmp: Path, data_dir: Path, model: str, *extra: str) -> dict:
    """One `recsys-ebm train` run into a SQLite store in ``tmp`` (cwd moves there: the default
    artifact root ./mlruns is resolved against it)."""
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    out = tmp / model
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.chdir(tmp)
        with redirect_stdout(io.StringIO()):
            code = main(["train", "--data-dir", str(data_dir), "--model", model, "--tracking-uri",
                         uri, "--output-dir", str(out), "--no-download", "--quiet", *extra])
    assert code == 0
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("recsys_ebm")
    (run,) = client.search_runs([experiment.experiment_id], f"tags.mlflow.runName = 'train-{model}'")
    return {"uri": uri, "out": out, "tmp": tmp, "run_id": run.info.run_id, "client": client}


@pytest.fixture(scope="module")
def ease_run(tmp_path_factory, movielens_dir) -> dict:
    return _train(tmp_path_factory.mktemp("ease"), movielens_dir, "ease", "--register", "recs")


@pytest.fixture(scope="module")
def dpebm_run(tmp_path_factory, movielens_dir) -> dict:
    return _train(tmp_path_factory.mktemp("dpebm"), movielens_dir, "dpebm",
                  "--set", "epochs=2", "--set", "patience=1")


def _pyfunc(run: dict):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", run["uri"])
        mlflow.set_tracking_uri(run["uri"])
        try:
            return mlflow.pyfunc.load_model(f"runs:/{run['run_id']}/{NAME}")
        finally:
            mlflow.set_tracking_uri(None)


def _expected(run: dict, request: int, *, user=None, history=None, ratings=None, group=None,
              strategy=None, weights=None, k=10, temperature=0.0, seed=0) -> pd.DataFrame:
    """What Python `model.recommend` (`recommend_group` for a group) answers for one request,
    in the pyfunc's output form."""
    model = load_model(run["out"])
    user_map, item_map = saved_id_maps(model, run["out"])
    options = {"k": k, "temperature": temperature, "rng": seed}
    if group is not None:
        members = user_map.to_index(np.array([int(u) for u in group]))
        ids, scores = model.recommend_group(members, k, strategy=strategy or "poe", weights=weights,
                                            temperature=temperature, rng=seed)
        ids, scores, user = ids[None], scores[None], ",".join(group)
    elif user is not None:
        ids, scores = model.recommend(user_map.to_index(np.array([int(user)])), **options)
    else:
        items = item_map.to_index(np.array([int(i) for i in history]))
        values = np.ones(len(items), np.float32) if ratings is None else np.float32(ratings)
        row = sp.csr_matrix((values, (np.zeros(len(items), int), items)), shape=(1, model.n_items))
        ids, scores = model.recommend(np.array([0]), row, fold_in=True, **options)
    keep = ids[0] >= 0
    return pd.DataFrame({"request": request, "user_id": user, "rank": np.arange(1, keep.sum() + 1),
                         "item_id": [str(i) for i in item_map.to_raw(ids[0][keep])],
                         "score": scores[0][keep].astype(float)})


def _requests() -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    rows = [{"user_id": user, "history": None, "k": 10, "temperature": 0.0, "seed": 0}
            for user in USERS]
    rows.append({"user_id": None, "history": HISTORY, "k": 7, "temperature": 0.0, "seed": 0})
    rows.append({"user_id": "196", "history": None, "k": 5, "temperature": 0.7, "seed": 11})
    rows.append({"user_id": None, "history": HISTORY, "k": 6, "temperature": 1.5, "seed": 3})
    for row in rows:
        row.update(group=None, strategy=None, weights=None)
    base = {"user_id": None, "history": None, "k": 8, "temperature": 0.0, "seed": 0}
    rows.append({**base, "group": ["1", "196", "405"], "strategy": "poe", "weights": None})
    rows.append({**base, "group": ["196", "943"], "strategy": "borda", "weights": None})
    rows.append({**base, "group": ["1", "405"], "strategy": None, "weights": [0.7, 0.3]})  # a taste mix
    rows.append({**base, "group": ["1", "196"], "strategy": "average", "weights": None,
                 "temperature": 0.6, "seed": 5})
    return pd.DataFrame(rows), rows


def _check_answers(run: dict, answer: pd.DataFrame, rows: list[dict]) -> None:
    assert list(answer.columns) == ["request", "user_id", "rank", "item_id", "score"]
    for request, row in enumerate(rows):
        got = answer[answer["request"] == request].reset_index(drop=True)
        want = _expected(run, request, user=row["user_id"], history=row["history"],
                         ratings=row.get("ratings"), group=row.get("group"),
                         strategy=row.get("strategy"), weights=row.get("weights"), k=row["k"],
                         temperature=row["temperature"], seed=row["seed"])
        assert got["item_id"].tolist() == want["item_id"].tolist(), request
        assert got["rank"].tolist() == want["rank"].tolist()
        # a JSON null read back into a frame may be NaN
        assert [None if pd.isna(u) else u for u in got["user_id"]] == want["user_id"].tolist()
        np.testing.assert_allclose(got["score"].to_numpy(float), want["score"], rtol=1e-6)


def test_logged_ease_model_answers_like_recommend(ease_run):
    frame, rows = _requests()
    _check_answers(ease_run, _pyfunc(ease_run).predict(frame), rows)


def test_logged_dpebm_model_answers_like_recommend(dpebm_run):
    frame, rows = _requests()
    _check_answers(dpebm_run, _pyfunc(dpebm_run).predict(frame), rows)
    artifacts = {a.path for a in dpebm_run["client"].list_artifacts(dpebm_run["run_id"], "figures")}
    assert "figures/training_curve.png" in artifacts


@pytest.fixture(scope="module")
def crbm_run(tmp_path_factory, movielens_dir) -> dict:
    return _train(tmp_path_factory.mktemp("crbm"), movielens_dir, "crbm", "--set", "epochs=1",
                  "--set", "patience=1")


#: a trained user and a new user's rated history, ranked and sampled
CRBM_ROWS = [{"user_id": "196", "history": None, "ratings": None, "k": 5, "temperature": 0.0,
              "seed": 0},
             {"user_id": None, "history": HISTORY, "ratings": [5.0, 4.0, 1.0, 3.0], "k": 5,
              "temperature": 0.8, "seed": 2}]


def test_logged_crbm_model_folds_in_rated_histories(crbm_run):
    run, rows = crbm_run, CRBM_ROWS
    model = _pyfunc(run)
    assert "ratings" in model.metadata.signature.inputs.input_names()
    _check_answers(run, model.predict(pd.DataFrame(rows)), rows)
    with pytest.raises(MlflowException, match="ratings list parallel to history"):
        model.predict(pd.DataFrame([{"user_id": None, "history": HISTORY, "ratings": None}]))


def test_defaults_and_clear_errors(ease_run):
    model = _pyfunc(ease_run)
    answer = model.predict(pd.DataFrame({"user_id": ["196"]}))  # k, temperature, seed default
    _check_answers(ease_run, answer, [{"user_id": "196", "history": None, "k": 10,
                                       "temperature": 0.0, "seed": 0}])
    with pytest.raises(MlflowException, match="99999"):
        model.predict(pd.DataFrame({"user_id": ["99999"]}))
    with pytest.raises(MlflowException, match="777777"):
        model.predict(pd.DataFrame({"history": [["50", "777777"]]}))
    with pytest.raises(MlflowException, match="exactly one of user_id, history or group"):
        model.predict(pd.DataFrame({"user_id": ["196"], "history": [["50"]]}))
    with pytest.raises(MlflowException, match="exactly one of user_id, history or group"):
        model.predict(pd.DataFrame({"user_id": ["196"], "group": [["1", "5"]]}))
    with pytest.raises(MlflowException, match="unknown group strategy 'dictator'"):
        model.predict(pd.DataFrame({"group": [["1", "5"]], "strategy": ["dictator"]}))
    with pytest.raises(MlflowException, match="3 weights for 2 members"):
        model.predict(pd.DataFrame({"group": [["1", "5"]], "weights": [[1.0, 2.0, 3.0]]}))
    with pytest.raises(MlflowException, match="group: .*99999"):
        model.predict(pd.DataFrame({"group": [["1", "99999"]]}))
    with pytest.raises(MlflowException, match="strategy and weights are for a group"):
        model.predict(pd.DataFrame({"user_id": ["196"], "strategy": ["borda"]}))


def test_run_records_dataset_figures_signature_and_registration(ease_run):
    client, run_id = ease_run["client"], ease_run["run_id"]
    (dataset_input,) = client.get_run(run_id).inputs.dataset_inputs
    assert dataset_input.dataset.name == "ml-100k"
    checksum = client.get_run(run_id).data.params["dataset_checksum"]
    assert dataset_input.dataset.digest == checksum[:36]
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "train"
    figures = {a.path for a in client.list_artifacts(run_id, "figures")}
    assert "figures/energy_histogram.png" in figures
    signature = _pyfunc(ease_run).metadata.signature
    assert signature.inputs.input_names() == ["user_id", "history", "k", "temperature", "seed",
                                              "group", "strategy", "weights"]
    assert signature.outputs.input_names() == ["request", "user_id", "rank", "item_id", "score"]
    (version,) = client.search_model_versions("name = 'recs'")
    assert version.run_id == run_id


def test_logged_model_holds_no_pickle_and_refuses_a_tampered_artifact(ease_run, tmp_path):
    """Logged from code: source plus the saved model directory, whose manifest's SHA-256s the
    toolkit's `load_model` checks when MLflow loads the model."""
    client = ease_run["client"]
    (logged,) = client.search_logged_models([client.get_experiment_by_name("recsys_ebm").experiment_id])
    # the store's artifacts are local files: a copy of the logged model, to tamper with
    local = Path(shutil.copytree(logged.artifact_location, tmp_path / "logged"))
    files = [p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))], files
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert "python_model" not in flavor and flavor["model_code_path"].endswith("recommender_code.py")
    assert flavor["config"]["load_model"] == "recsys_ebm.models:load_model"
    answer = mlflow.pyfunc.load_model(str(local)).predict(pd.DataFrame({"user_id": ["196"]}))
    assert answer["item_id"].tolist() == _expected(ease_run, 0, user="196")["item_id"].tolist()

    artifact = local / flavor["artifacts"]["model"]["path"]
    manifest = json.loads((artifact / "manifest.json").read_text())["files"]
    target = max((artifact / name for name in manifest), key=lambda f: f.stat().st_size)  # weights
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(Exception, match="does not match its manifest"):
        mlflow.pyfunc.load_model(str(local))


@pytest.fixture
def served(ease_run):
    """`mlflow models serve` of the logged model on a free local port; stopped at teardown."""
    yield from _serve(ease_run)


def _serve(run: dict):
    """Serve ``run``'s logged model with `mlflow models serve` on a free local port until the
    generator is closed."""
    port, tmp = free_port(), run["tmp"]
    log_path = tmp / f"serve-{port}.log"
    # the server runs `uvicorn` from PATH: the one beside this Python
    env = {**os.environ, "MLFLOW_TRACKING_URI": run["uri"],
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m",
           f"runs:/{run['run_id']}/{NAME}", "--env-manager", "local", "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # one process group to stop
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(proc, f"{url}/ping", log_path, "mlflow models serve")
        yield url
    finally:
        stop_process_group(proc)


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_served_model_answers_like_recommend_over_http(ease_run, served):
    frame, rows = _requests()
    body = {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}
    status, answer = _post(served, body)
    assert status == 200, answer
    _check_answers(ease_run, pd.DataFrame(answer["predictions"]), rows)

    status, error = _post(served, {"dataframe_split": {"columns": ["user_id"],
                                                       "data": [["99999"]]}})
    assert status == 400
    assert "99999" in error["message"]


def test_served_rating_model_answers_like_recommend_over_http(crbm_run):
    """The CRBM (a rating model: histories carry ratings) through `mlflow models serve`."""
    server = _serve(crbm_run)
    url = next(server)
    try:
        frame = pd.DataFrame(CRBM_ROWS)
        body = {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}
        status, answer = _post(url, body)
        assert status == 200, answer
        _check_answers(crbm_run, pd.DataFrame(answer["predictions"]), CRBM_ROWS)
        status, error = _post(url, {"dataframe_split": {
            "columns": ["history", "ratings"], "data": [[HISTORY, None]]}})
        assert status == 400 and "ratings list parallel to history" in error["message"]
    finally:
        server.close()
