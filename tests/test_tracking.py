"""Tracker against real MLflow stores: a SQLite file in tmp_path and a live `mlflow server`;
stores that cannot be used fail fast, naming the URI."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from recsys_ebm.cli import main
from recsys_ebm.errors import TrackingError
from recsys_ebm.tracking import START_HTTP_LIMITS, Tracker, git_commit, git_dirty, sanitize_name


@pytest.fixture
def store_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite store in tmp_path; cwd moves there too, since the default artifact root
    (./mlruns) is resolved against it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com",
                    "-c", "commit.gpgsign=false", *args], cwd=repo, check=True,
                   capture_output=True)


def _run_data(uri: str, run_id: str):
    return MlflowClient(uri).get_run(run_id)


def test_params_metrics_tags_and_artifacts(store_uri, tmp_path, monkeypatch, caplog):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("a")
    _git(repo, "add", "a.txt")
    _git(repo, "commit", "-q", "-m", "init")
    monkeypatch.chdir(repo)
    sha = git_commit()
    assert sha is not None and len(sha) == 40
    assert git_dirty() is False

    many = {f"p{i}": i for i in range(250)}  # above MLflow's 100-params-per-request limit
    frame = pd.DataFrame({"user_id": [1, 2], "ndcg": [0.5, 0.25]})
    with caplog.at_level(logging.WARNING, logger="recsys_ebm.tracking"):
        with Tracker("exp", tracking_uri=store_uri, run_name="r1", tags={"stage": "test"}) as tr:
            tr.log_params({"model": {"dim": 64, "opt": {"lr": 0.01}}, "seed": 7, **many})
            tr.log_dataset("ml-100k", "abc123", n_users=943)
            for epoch in (1, 2, 3):
                tr.log_epoch(epoch, {"loss": 1.0 / epoch, "ndcg@10": 0.1 * epoch})
            tr.log_metrics({"recall@20": 0.3, "bad": float("nan"), "worse": float("inf")})
            tr.log_dict({"k": [1, 2], "x": 0.5}, "summary.json")
            tr.log_text("hello", "notes/readme.txt")
            tr.log_table(frame, "eval/per_user.csv")
            tr.set_tags({"phase": "done"})
            assert tr.artifact_uri is not None
    assert "bad" in caplog.text and "worse" in caplog.text

    client = MlflowClient(store_uri)
    run = client.get_run(tr.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "r1"
    params = run.data.params
    assert params["model.dim"] == "64"
    assert params["model.opt.lr"] == "0.01"
    assert params["seed"] == "7"
    assert params["p249"] == "249"
    assert params["dataset"] == "ml-100k"
    assert params["dataset_checksum"] == "abc123"
    assert params["dataset_n_users"] == "943"

    assert set(run.data.metrics) == {"loss", "ndcg_at_10", "recall_at_20"}
    history = sorted(client.get_metric_history(tr.run_id, "ndcg_at_10"), key=lambda m: m.step)
    assert [m.step for m in history] == [1, 2, 3]
    assert [m.value for m in history] == pytest.approx([0.1, 0.2, 0.3])
    loss = sorted(client.get_metric_history(tr.run_id, "loss"), key=lambda m: m.step)
    assert [m.value for m in loss] == pytest.approx([1.0, 0.5, 1.0 / 3])

    tags = run.data.tags
    assert tags["git_commit"] == sha
    assert tags["git_dirty"] == "false"
    assert tags["stage"] == "test"
    assert tags["phase"] == "done"

    top = {f.path for f in client.list_artifacts(tr.run_id)}
    assert top == {"summary.json", "notes", "eval"}
    assert [f.path for f in client.list_artifacts(tr.run_id, "eval")] == ["eval/per_user.csv"]
    local = Path(client.download_artifacts(tr.run_id, "", str(tmp_path / "dl")))
    assert (local / "notes" / "readme.txt").read_text() == "hello"
    assert '"k": [\n    1,\n    2\n  ]' in (local / "summary.json").read_text()
    back = pd.read_csv(local / "eval" / "per_user.csv")
    assert list(back.columns) == ["user_id", "ndcg"]
    assert back["user_id"].tolist() == [1, 2]


def test_failed_block_marks_run_failed(store_uri):
    with pytest.raises(RuntimeError, match="boom"):
        with Tracker("exp", tracking_uri=store_uri) as tr:
            tr.log_metrics({"loss": 1.0}, step=1)
            raise RuntimeError("boom")
    run = _run_data(store_uri, tr.run_id)
    assert run.info.status == "FAILED"
    assert run.data.metrics["loss"] == pytest.approx(1.0)
    assert run.data.tags["git_dirty"] in {"true", "false", "unknown"}


def test_child_runs_carry_parent_id(store_uri):
    with Tracker("exp", tracking_uri=store_uri, run_name="sweep", tags={"grid": "g1"}) as parent:
        parent.log_params({"dataset": "ml-100k"})
        child_ids = []
        for name in ("dot_ebm", "crbm"):
            with parent.child(name) as child:
                child.log_epoch(1, {"loss": 0.5})
                child_ids.append(child.run_id)
        with pytest.raises(ValueError):
            with parent.child("broken"):
                raise ValueError("diverged")
    client = MlflowClient(store_uri)
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name(
        "exp").experiment_id])}
    assert set(runs) == {"sweep", "dot_ebm", "crbm", "broken"}
    for name in ("dot_ebm", "crbm", "broken"):
        assert runs[name].data.tags["mlflow.parentRunId"] == parent.run_id
        assert runs[name].data.tags["grid"] == "g1"
    assert "mlflow.parentRunId" not in runs["sweep"].data.tags
    assert [runs["dot_ebm"].info.run_id, runs["crbm"].info.run_id] == child_ids
    assert runs["broken"].info.status == "FAILED"
    assert runs["sweep"].info.status == "FINISHED"
    assert runs["crbm"].data.metrics["loss"] == pytest.approx(0.5)
    assert runs["sweep"].data.metrics == {}


def test_disabled_tracker_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # MLflow's default store would land here
    (tmp_path / "art.txt").write_text("x")
    for uri in (None, f"sqlite:///{tmp_path / 'mlflow.db'}"):
        with Tracker(tracking_uri=uri, enabled=False) as tr:
            tr.log_params({"a": {"b": 1}})
            tr.log_metrics({"ndcg@10": 0.5})
            tr.log_epoch(1, {"loss": 1.0})
            tr.log_dataset("ml-100k", "abc")
            tr.log_artifact(tmp_path / "art.txt")
            tr.log_artifacts(tmp_path)
            tr.log_dict({"a": 1}, "a.json")
            tr.log_text("t", "t.txt")
            tr.log_table(pd.DataFrame({"a": [1]}), "t.csv")
            tr.set_tags({"a": "b"})
            with tr.child("inner") as child:
                child.log_epoch(1, {"loss": 1.0})
        assert tr.run_id is None and tr.artifact_uri is None and child.run_id is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art.txt"]


def test_default_store_is_sqlite_in_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    with Tracker("exp") as tr:
        tr.log_text("hi", "hi.txt")
    assert (tmp_path / "mlflow.db").is_file()
    assert (tmp_path / "mlruns").is_dir()
    run = _run_data(f"sqlite:///{tmp_path / 'mlflow.db'}", tr.run_id)
    assert run.info.status == "FINISHED"


def test_argument_takes_precedence_over_env_var(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env_uri = f"sqlite:///{tmp_path / 'env.db'}"
    arg_uri = f"sqlite:///{tmp_path / 'arg.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env_uri)
    with Tracker("exp", tracking_uri=arg_uri) as tr:
        tr.log_params({"a": 1})
    assert not (tmp_path / "env.db").exists()
    assert _run_data(arg_uri, tr.run_id).data.params == {"a": "1"}
    with Tracker("exp") as tr_env:
        tr_env.log_params({"b": 2})
    assert _run_data(env_uri, tr_env.run_id).data.params == {"b": "2"}


def test_logging_outside_block_raises(store_uri):
    tracker = Tracker("exp", tracking_uri=store_uri)
    with pytest.raises(RuntimeError, match="with"):
        tracker.log_metrics({"loss": 1.0})
    with pytest.raises(RuntimeError, match="parent"):
        tracker.child("c").__enter__()


def test_git_commit_outside_repo_is_none(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    (tmp_path / "sub").mkdir()
    assert git_commit(tmp_path / "sub") is None
    assert git_dirty(tmp_path / "sub") is None


@pytest.mark.parametrize(("raw", "clean"), [
    ("ndcg@10", "ndcg_at_10"),
    ("train/loss", "train/loss"),
    ("val.recall-20 x", "val.recall-20 x"),
    ("hit:rate(5)", "hit_rate_5_"),
    ("/abs//path", "_abs__path"),
    ("..", "_.."),
])
def test_sanitize_name(raw, clean):
    assert sanitize_name(raw) == clean


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path: Path):
    """A live `mlflow server` (SQLite backend, proxied artifacts) on a free local port."""
    port = _free_port()
    log_path = tmp_path / "server.log"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
           "--artifacts-destination", str(tmp_path / "artifacts"),
           "--allowed-hosts", f"127.0.0.1:{port},127.0.0.1,localhost:{port}"]
    with open(log_path, "wb") as log:
        # own session, so teardown can stop the server and its workers as one process group
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}:\n"
                            f"{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy after 90 s:\n"
                            f"{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_round_trip_through_tracking_server(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with Tracker("server_exp", tracking_uri=mlflow_server, run_name="remote") as tr:
        tr.log_params({"model": {"dim": 8}})
        tr.log_epoch(1, {"loss": 0.75})
        tr.log_epoch(2, {"loss": 0.5})
        tr.log_text("served artifact", "notes/hello.txt")
    assert tr.artifact_uri.startswith("mlflow-artifacts:")
    client = MlflowClient(mlflow_server)
    run = client.get_run(tr.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"model.dim": "8"}
    history = sorted(client.get_metric_history(tr.run_id, "loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(1, pytest.approx(0.75)),
                                                    (2, pytest.approx(0.5))]
    local = client.download_artifacts(tr.run_id, "notes/hello.txt", str(tmp_path / "dl"))
    assert Path(local).read_text() == "served artifact"
    # the server, not the client, wrote the file under --artifacts-destination
    assert list((tmp_path / "artifacts").rglob("hello.txt"))


# --- stores that cannot be used: a clear TrackingError naming the URI, within seconds ---------

#: Generous bound on how long a failing start may take: these are behaviour bounds (MLflow's
#: defaults took 100-250 s), not speed benchmarks.
FAIL_FAST_S = 30


@pytest.fixture
def closed_port():
    """A local port bound by this socket but not listening: connections are refused, and
    nothing else can take the port while the test runs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def no_limits_set(monkeypatch):
    """Neither the tracking URI nor MLflow's HTTP limits come from the environment."""
    for name in ("MLFLOW_TRACKING_URI", *START_HTTP_LIMITS):
        monkeypatch.delenv(name, raising=False)


def _start_error(uri: str | None, experiment: str = "exp") -> tuple[str, float]:
    start = time.monotonic()
    with pytest.raises(TrackingError) as info:
        with Tracker(experiment, tracking_uri=uri):
            pytest.fail("the run started")
    return str(info.value), time.monotonic() - start


def test_closed_port_fails_fast_naming_uri_and_limits(closed_port, no_limits_set):
    uri = f"http://127.0.0.1:{closed_port}"
    message, elapsed = _start_error(uri)
    assert elapsed < FAIL_FAST_S
    assert repr(uri) in message and "Connection refused" in message
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES=2" in message
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT=3" in message
    # the short limits applied only while starting; the environment is as it was
    assert not set(START_HTTP_LIMITS) & set(os.environ)


def test_limits_set_by_the_user_are_kept(tmp_path, no_limits_set, monkeypatch):
    """A server that accepts connections but never answers: the user's 1 s timeout and no
    retries apply instead of ours (3 s, 2 retries)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)  # the kernel completes the handshake; nobody ever reads or answers
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
        message, elapsed = _start_error(uri)
    assert elapsed < 2.5 + 1  # one attempt of 1 s, plus slack for a busy machine
    assert repr(uri) in message and "timed out" in message
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT=1" in message
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES=0" in message
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "1"
    assert "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR" not in os.environ


def test_unsupported_scheme_lists_the_supported_ones(no_limits_set):
    message, elapsed = _start_error("foo://bar")
    assert elapsed < FAIL_FAST_S
    assert "'foo://bar'" in message and "unsupported scheme 'foo'" in message
    for scheme in ("file", "sqlite", "http", "https", "postgresql"):
        assert scheme in message


def test_uri_from_environment_is_named_as_such(no_limits_set, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "foo://bar")
    message, _ = _start_error(None)
    assert "'foo://bar' (from $MLFLOW_TRACKING_URI)" in message


def test_missing_directories_are_created_for_sqlite_and_file_stores(tmp_path, no_limits_set,
                                                                     monkeypatch):
    """As MLflow does: a SQLite file's directory, like a file store's, is created."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    db = tmp_path / "new" / "deeper" / "mlflow.db"
    runs = tmp_path / "other" / "mlruns"
    for uri in (f"sqlite:///{db}", runs.as_uri()):
        with Tracker("exp", tracking_uri=uri) as tr:
            tr.log_params({"a": 1})
        assert MlflowClient(uri).get_run(tr.run_id).data.params == {"a": "1"}
    assert db.is_file() and runs.is_dir()


@pytest.mark.parametrize("case", ["parent_is_a_file", "path_is_a_directory", "not_a_database"])
def test_sqlite_store_that_cannot_be_opened(tmp_path, no_limits_set, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    regular = tmp_path / "regular"
    regular.write_text("not a database")
    (tmp_path / "folder").mkdir()
    path = {"parent_is_a_file": regular / "sub" / "mlflow.db",  # cannot create its directory
            "path_is_a_directory": tmp_path / "folder",  # MLflow retried this one for ~100 s
            "not_a_database": regular}[case]
    uri = f"sqlite:///{path}"
    message, elapsed = _start_error(uri)
    assert elapsed < FAIL_FAST_S
    assert repr(uri) in message and "cannot be used" in message
    assert regular.read_text() == "not a database"


def test_file_stores_refused_or_broken(tmp_path, no_limits_set, monkeypatch):
    monkeypatch.chdir(tmp_path)
    regular = tmp_path / "regular"
    regular.write_text("x")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    uri = (tmp_path / "mlruns").as_uri()
    message, _ = _start_error(uri)  # MLflow 3 refuses new file stores unless opted in
    assert repr(uri) in message and "MLFLOW_ALLOW_FILE_STORE" in message
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    for uri in (regular.as_uri(), str(regular)):
        message, _ = _start_error(uri)
        assert repr(uri) in message and "Not a directory" in message


@pytest.mark.parametrize("kind", ["closed_port", "unsupported"])
def test_cli_train_stops_before_any_work(kind, closed_port, movielens_dir, tmp_path,
                                         no_limits_set, monkeypatch, caplog, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"http://127.0.0.1:{closed_port}" if kind == "closed_port" else "foo://bar"
    out = tmp_path / "model"
    start = time.monotonic()
    code = main(["train", "--data-dir", str(movielens_dir), "--no-download", "--tracking-uri",
                 uri, "--set", "epochs=1", "--output-dir", str(out), "--quiet"])
    elapsed = time.monotonic() - start
    assert code == 2
    assert elapsed < FAIL_FAST_S
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "recsys_ebm.cli"]
    assert len(errors) == 1 and repr(uri) in errors[0].getMessage()
    assert not out.exists()  # no model written ...
    assert capsys.readouterr().out == ""  # ... and no metric table printed
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nor a default store or outputs/
