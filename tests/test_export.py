"""Batch export: exact and sampled lists, probabilities, atomic writes, resume, CLI + MLflow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from mlflow.tracking import MlflowClient

from benchmarks.synthetic import SyntheticConfig, generate
from recsys_ebm.export.writer import ExportConfig, export_recommendations, parts_dir
from recsys_ebm.models.base import Recommender
from recsys_ebm.models.dot_ebm import DotEBM
from recsys_ebm.models.indexed import IndexedRecommender
from recsys_ebm.ranking.faiss_index import EnergyIndex


@pytest.fixture(scope="module")
def fitted() -> tuple[DotEBM, sp.csr_matrix]:
    data = generate(SyntheticConfig(n_users=150, n_items=120, n_interactions=4000, rank=4, n_tastes=6, seed=1))
    model = DotEBM(dim=8, user_model="free", epochs=3, lr=0.05, seed=0).fit(data.user_items, show_progress=False)
    return model, data.user_items


class ScoreOnly(Recommender):
    """A Recommender without vectors: its recommend (and so export) goes through `score`."""

    def __init__(self, model: DotEBM):
        self.model = model
        self.n_users, self.n_items = model.n_users, model.n_items
        self.seen_items = model.seen_items

    def fit(self, user_items, **kwargs):  # pragma: no cover - wraps a fitted model
        raise NotImplementedError

    def score(self, user_ids, user_items=None):
        return self.model.score(user_ids)


RAW_USERS = lambda n: np.arange(n) * 10 + 7  # noqa: E731
RAW_ITEMS = lambda n: np.arange(n) * 3 + 1000  # noqa: E731


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if str(path).endswith(".csv") else pd.read_parquet(path)


def _softmax_unseen(scores: np.ndarray, seen: np.ndarray, temperature: float) -> np.ndarray:
    z = np.where(seen, -np.inf, scores.astype(np.float64) / temperature)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def test_exact_export_matches_recommend(fitted, tmp_path):
    model, user_items = fitted
    out = tmp_path / "top.parquet"
    result = export_recommendations(model, out, user_items=user_items, raw_user_ids=RAW_USERS(model.n_users),
                                    raw_item_ids=RAW_ITEMS(model.n_items), k=10, chunk_size=40,
                                    show_progress=False)
    frame = _read(out)
    assert list(frame.columns) == ["user_id", "rank", "item_id", "energy", "probability"]
    assert result.n_rows == len(frame) == model.n_users * 10 and result.n_chunks == 4
    assert not parts_dir(out).exists()
    users = (frame["user_id"].to_numpy() - 7) // 10
    items = (frame["item_id"].to_numpy() - 1000) // 3
    ids, scores = model.recommend(np.arange(model.n_users), user_items, k=10)
    np.testing.assert_array_equal(items.reshape(-1, 10), ids)
    np.testing.assert_array_equal(users.reshape(-1, 10), np.repeat(np.arange(model.n_users), 10).reshape(-1, 10))
    np.testing.assert_array_equal(frame["rank"].to_numpy().reshape(-1, 10), np.tile(np.arange(1, 11), (model.n_users, 1)))
    np.testing.assert_allclose(frame["energy"].to_numpy(), -scores.ravel(), rtol=1e-5, atol=1e-6)
    seen = user_items.toarray() > 0
    assert not seen[users, items].any()
    # T = 0: probabilities are the T = 1 Gibbs distribution over unseen items
    p = _softmax_unseen(model.score(np.arange(model.n_users)), seen, 1.0)
    np.testing.assert_allclose(frame["probability"].to_numpy(), p[users, items], rtol=1e-4)


def test_score_only_models_export_the_same(fitted, tmp_path):
    model, user_items = fitted
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    export_recommendations(model, a, user_items=user_items, k=7, show_progress=False)
    export_recommendations(ScoreOnly(model), b, user_items=user_items, k=7, show_progress=False)
    fa, fb = _read(a), _read(b)
    pd.testing.assert_frame_equal(fa[["user_id", "rank", "item_id"]], fb[["user_id", "rank", "item_id"]])
    np.testing.assert_allclose(fa["energy"], fb["energy"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fa["probability"], fb["probability"], rtol=1e-4)


def test_sampled_export_is_reproducible_and_chunk_invariant(fitted, tmp_path):
    model, user_items = fitted
    kwargs = dict(user_items=user_items, k=6, temperature=0.7, show_progress=False)
    a = export_recommendations(model, tmp_path / "a.csv", seed=3, chunk_size=1000, **kwargs).path
    b = export_recommendations(model, tmp_path / "b.csv", seed=3, chunk_size=17, batch_size=5,
                               n_threads=1, **kwargs).path
    c = export_recommendations(model, tmp_path / "c.csv", seed=4, **kwargs).path
    d = export_recommendations(ScoreOnly(model), tmp_path / "d.csv", seed=3, chunk_size=33, **kwargs).path
    fa, fb, fc, fd = _read(a), _read(b), _read(c), _read(d)
    pd.testing.assert_frame_equal(fa, fb)
    assert not fa["item_id"].equals(fc["item_id"])
    assert (fa["item_id"] == fd["item_id"]).mean() > 0.98  # same draws up to rounding of the product
    users, items = fa["user_id"].to_numpy(), fa["item_id"].to_numpy()
    seen = user_items.toarray() > 0
    assert not seen[users, items].any()
    assert fa.groupby("user_id")["item_id"].nunique().eq(6).all()
    scores = model.score(np.arange(model.n_users))
    np.testing.assert_allclose(fa["energy"], -scores[users, items], rtol=1e-5, atol=1e-6)
    p = _softmax_unseen(scores, seen, 0.7)
    np.testing.assert_allclose(fa["probability"], p[users, items], rtol=1e-4)


def test_default_exclusions_are_the_models_seen_set(fitted, tmp_path):
    model, user_items = fitted
    a = export_recommendations(model, tmp_path / "a.parquet", k=8, show_progress=False).path
    b = export_recommendations(model, tmp_path / "b.parquet", user_items=user_items, k=8,
                               show_progress=False).path
    fa = _read(a)
    pd.testing.assert_frame_equal(fa, _read(b))
    assert not (user_items.toarray() > 0)[fa["user_id"], fa["item_id"]].any()
    # other exclusions are honoured: nothing excluded gives the plain top-k, seen items included
    nothing = sp.csr_matrix(user_items.shape, dtype=np.float32)
    fc = _read(export_recommendations(model, tmp_path / "c.parquet", user_items=nothing, k=8,
                                      show_progress=False).path)
    ids, _ = model.recommend(np.arange(model.n_users), filter_seen=False, k=8)
    np.testing.assert_array_equal(fc["item_id"].to_numpy().reshape(-1, 8), ids)
    assert (user_items.toarray() > 0)[fc["user_id"], fc["item_id"]].any()


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_export_through_a_flat_index_equals_the_models(fitted, tmp_path, temperature):
    """An IndexedRecommender is exported like any model; with a flat index and every item a
    candidate it serves the model's own lists and probabilities."""
    model, _ = fitted
    served = IndexedRecommender(model, EnergyIndex.build(model, kind="flat"), n_candidates=model.n_items)
    kwargs = dict(k=6, temperature=temperature, seed=2, chunk_size=50, show_progress=False)
    fa = _read(export_recommendations(model, tmp_path / "a.parquet", **kwargs).path)
    fb = _read(export_recommendations(served, tmp_path / "b.parquet", **kwargs).path)
    assert len(fa) == len(fb) == model.n_users * 6
    if temperature == 0:
        assert (fa["item_id"] == fb["item_id"]).mean() > 0.99  # only float ties may differ
    else:  # draws over candidates sorted by score, not by id: same distribution, other draws
        assert fb.groupby("user_id")["item_id"].nunique().eq(6).all()
        again = export_recommendations(served, tmp_path / "c.parquet", **{**kwargs, "chunk_size": 17}).path
        pd.testing.assert_frame_equal(_read(again), fb)
    users, items = fb["user_id"].to_numpy(), fb["item_id"].to_numpy()
    assert not (model.seen_items.toarray() > 0)[users, items].any()
    scores = model.score(np.arange(model.n_users))
    np.testing.assert_allclose(fb["energy"], -scores[users, items], rtol=1e-5, atol=1e-5)
    p = _softmax_unseen(scores, model.seen_items.toarray() > 0, temperature or 1.0)
    np.testing.assert_allclose(fb["probability"], p[users, items], rtol=1e-4)


def test_users_with_fewer_than_k_unseen_items(fitted, tmp_path):
    model, _ = fitted
    seen = np.zeros((model.n_users, model.n_items), np.float32)
    seen[0, 3:] = 1  # 3 unseen items
    seen[1, :] = 1  # nothing left
    out = export_recommendations(model, tmp_path / "f.parquet", user_items=sp.csr_matrix(seen), k=5,
                                 show_progress=False).path
    frame = _read(out)
    counts = frame.groupby("user_id").size()
    assert counts[0] == 3 and 1 not in counts.index and counts.drop(0).eq(5).all()
    assert set(frame.loc[frame.user_id == 0, "item_id"]) == {0, 1, 2}


def test_interrupted_export_keeps_the_previous_file_and_resumes(fitted, tmp_path):
    model, user_items = fitted
    out = tmp_path / "top.parquet"
    out.write_bytes(b"previous export")
    kwargs = dict(user_items=user_items, k=5, temperature=0.5, seed=1, chunk_size=30, show_progress=False)

    def stop_after_two(index: int, n_chunks: int) -> None:
        if index == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_recommendations(model, out, on_chunk=stop_after_two, **kwargs)
    assert out.read_bytes() == b"previous export"
    assert sorted(p.name for p in parts_dir(out).glob("part-*")) == [
        "part-000000.arrow", "part-000000.json", "part-000001.arrow", "part-000001.json"]
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind
    # settings changed: refuse to mix chunks
    with pytest.raises(ValueError, match="seed"):
        export_recommendations(model, out, resume=True, **{**kwargs, "seed": 2})
    assert out.read_bytes() == b"previous export"
    seen_chunks = []
    result = export_recommendations(model, out, resume=True, on_chunk=lambda i, n: seen_chunks.append(i), **kwargs)
    assert result.resumed_chunks == 2 and seen_chunks == [2, 3, 4]
    fresh = export_recommendations(model, tmp_path / "fresh.parquet", **kwargs)
    pd.testing.assert_frame_equal(_read(out), _read(fresh.path))
    assert not parts_dir(out).exists()
    # without resume, leftover chunks of another run are discarded, not reused
    with pytest.raises(KeyboardInterrupt):
        export_recommendations(model, out, on_chunk=stop_after_two, **kwargs)
    export_recommendations(model, out, **{**kwargs, "seed": 9})
    assert not _read(out).equals(_read(fresh.path))


def test_export_config_validation(fitted, tmp_path):
    model, user_items = fitted
    for bad in ({"k": 0}, {"temperature": -1.0}, {"chunk_size": 0}, {"unknown": 1},
                {"temperature": float("inf")}):
        with pytest.raises(ValueError):
            export_recommendations(model, tmp_path / "x.parquet", user_items=user_items, show_progress=False, **bad)
    with pytest.raises(ValueError):
        export_recommendations(model, tmp_path / "x.parquet", user_items=user_items[:5], show_progress=False)
    with pytest.raises(ValueError):
        export_recommendations(model, tmp_path / "x.parquet", raw_user_ids=[1, 2], show_progress=False)
    with pytest.raises(ValueError):
        export_recommendations(model, tmp_path / "x.parquet", config=ExportConfig(), k=3)


def test_cli_export_of_a_saved_model_logs_to_mlflow(movielens_dir, tmp_path, monkeypatch):
    from recsys_ebm.cli import main
    from recsys_ebm.experiments import runner
    from recsys_ebm.models import load_model

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    dataset = runner.load_dataset("movielens", "100k", str(movielens_dir), download=False)
    data = runner.prepare(runner.make_split(dataset.ratings, "random"), "random")
    model = DotEBM(dim=4, user_model="free", epochs=1, seed=0).fit(data.train.user_items, show_progress=False)
    model_dir = model.save(tmp_path / "model", meta={"user_ids": data.train.user_map.to_list(),
                                                     "item_ids": data.train.item_map.to_list(),
                                                     "dataset_checksum": dataset.checksum})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "ml100k.parquet"
    code = main(["export", "--quiet", "--data-dir", str(movielens_dir), "--no-download",
                 "--model-path", str(model_dir), "--k", "20", "--output", str(out),
                 "--tracking-uri", uri, "--experiment", "export-test"])
    assert code == 0
    frame = pd.read_parquet(out)
    assert frame["user_id"].nunique() == data.train.n_users and (frame.groupby("user_id").size() == 20).all()
    # the model's seen set (the training interactions it was fitted on) is excluded, and the
    # lists are exactly what the saved model's recommend serves
    user_raw, item_raw = np.asarray(data.train.user_map.raw_ids), np.asarray(data.train.item_map.raw_ids)
    train = data.train.user_items.tocoo()
    trained = set(zip(user_raw[train.row].tolist(), item_raw[train.col].tolist(), strict=True))
    assert not any(pair in trained for pair in zip(frame["user_id"].tolist(), frame["item_id"].tolist(),
                                                   strict=True))
    ids, _ = load_model(model_dir).recommend(np.arange(data.train.n_users), k=20)
    np.testing.assert_array_equal(frame["item_id"].to_numpy().reshape(-1, 20), item_raw[ids])
    np.testing.assert_array_equal(frame["user_id"].to_numpy()[::20], user_raw)
    # served through a flat index: the same lists
    indexed = tmp_path / "indexed.parquet"
    assert main(["export", "--quiet", "--data-dir", str(movielens_dir), "--no-download", "--model-path",
                 str(model_dir), "--k", "20", "--index", "flat", "--output", str(indexed), "--no-mlflow"]) == 0
    assert (model_dir / "index-flat").is_dir()
    assert (pd.read_parquet(indexed)["item_id"] == frame["item_id"]).mean() > 0.99
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("export-test").experiment_id])[0]
    assert run.info.status == "FINISHED"
    assert run.data.metrics["export_rows"] == len(frame)
    assert run.data.params["export.k"] == "20" and run.data.params["dataset"] == dataset.name
    # a sampled export through the CLI is reproducible for a seed
    args = ["export", "--quiet", "--data-dir", str(movielens_dir), "--no-download", "--model-path",
            str(model_dir), "--k", "5", "--temperature", "0.5", "--seed", "3", "--no-mlflow"]
    assert main([*args, "--output", str(tmp_path / "a.csv")]) == 0
    assert main([*args, "--output", str(tmp_path / "b.csv"), "--chunk-size", "100"]) == 0
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_resume_redoes_parts_that_do_not_match_their_record(fitted, tmp_path, caplog):
    """A part copied over another used to be accepted (one user lost, another twice)."""
    model, user_items = fitted
    out = tmp_path / "top.parquet"
    kwargs = dict(user_items=user_items, k=5, chunk_size=30, show_progress=False)
    reference = _read(export_recommendations(model, tmp_path / "ref.parquet", **kwargs).path)

    def stop_after_three(index: int, n_chunks: int) -> None:
        if index == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_recommendations(model, out, on_chunk=stop_after_three, **kwargs)
    parts = parts_dir(out)
    (parts / "part-000001.arrow").write_bytes((parts / "part-000000.arrow").read_bytes())
    (parts / "part-000002.json").write_text("{}")
    with caplog.at_level("WARNING"):
        result = export_recommendations(model, out, resume=True, **kwargs)
    assert result.resumed_chunks == 1  # only part 0 is still what its record says
    assert "part 1 " in caplog.text and "part 2 " in caplog.text
    pd.testing.assert_frame_equal(_read(out), reference)


def test_an_output_that_is_a_directory_is_a_clear_error(fitted, tmp_path):
    from recsys_ebm.errors import DataError

    model, user_items = fitted
    (tmp_path / "out").mkdir()
    with pytest.raises(DataError, match="is a directory"):
        export_recommendations(model, tmp_path / "out", user_items=user_items, k=3, show_progress=False)
    assert list((tmp_path / "out").iterdir()) == []


def test_temporary_files_of_killed_exports_are_removed_by_the_next_run(fitted, tmp_path):
    import subprocess
    import sys

    model, user_items = fitted
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".top.parquet.{dead.pid}-abcd_1234.tmp"
    stale.write_bytes(b"half an export")
    someone_elses = tmp_path / ".top.parquet.notes"
    someone_elses.write_text("keep")
    export_recommendations(model, tmp_path / "top.parquet", user_items=user_items, k=3, show_progress=False)
    assert not stale.exists() and someone_elses.read_text() == "keep"


def test_parquet_exports_say_what_made_them(fitted, tmp_path):
    import json

    import pyarrow.parquet as pq

    model, user_items = fitted
    out = export_recommendations(model, tmp_path / "top.parquet", user_items=user_items, k=4,
                                 temperature=0.5, seed=9, show_progress=False).path
    meta = {k.decode(): v.decode() for k, v in pq.read_schema(out).metadata.items()}
    assert meta["recsys_ebm.model"] == type(model).__name__
    assert (meta["recsys_ebm.k"], meta["recsys_ebm.temperature"], meta["recsys_ebm.seed"]) == ("4", "0.5", "9")
    assert json.loads(meta["recsys_ebm.serving"])["path"] == "exact"
    assert meta["recsys_ebm.created_at"].startswith("20") and "recsys_ebm.run_id" in meta
