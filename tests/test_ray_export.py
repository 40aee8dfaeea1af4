"""The distributed export on a real two-node Ray cluster (127.0.0.1 only): the command line's
dataset holds exactly the single-process export's rows, ranked and sampled; interrupted runs
resume by shard; without ray, ``--ray-address`` says what to install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ray_fixtures import listening_addresses, loopback_only, session_pids

from recsys_ebm.distributed.cluster import RAY_DATA_THREADS, settle_threads
from recsys_ebm.errors import DataError
from recsys_ebm.models.dot_ebm import DotEBM

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def saved_model(movielens_dir, tmp_path_factory):
    """A small dpebm trained on ml-100k, saved the way ``recsys-ebm train`` saves it."""
    from recsys_ebm.experiments import runner

    dataset = runner.load_dataset("movielens", "100k", str(movielens_dir), download=False)
    data = runner.prepare(runner.make_split(dataset.ratings, "random"), "random")
    model = DotEBM(dim=16, user_model="free", epochs=3, lr=0.02, seed=0).fit(
        data.train.user_items, show_progress=False)
    path = tmp_path_factory.mktemp("ray-model") / "dpebm"
    return model.save(path, meta={"user_ids": data.train.user_map.to_list(),
                                  "item_ids": data.train.item_map.to_list(),
                                  "dataset_checksum": dataset.checksum})


def _cli(args: list[str], timeout: float = 150) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", "import sys; from recsys_ebm.cli import main; sys.exit(main())", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def _single(movielens_dir, model_dir, out, *extra) -> pd.DataFrame:
    from recsys_ebm.cli import main

    assert main(["export", "--quiet", "--no-mlflow", "--data-dir", str(movielens_dir),
                 "--no-download", "--model-path", str(model_dir), "--output", str(out), *extra]) == 0
    return pd.read_parquet(out)


def test_cli_export_on_two_nodes_is_the_single_process_export(ray_cluster_info, saved_model,
                                                              movielens_dir, tmp_path):
    """The bar: ``export --k 100 --ray-address ADDRESS --num-workers 2`` on the two-node cluster
    writes a dataset pandas reads as exactly the single-process export's rows; and sampled."""
    common = ["export", "--dataset", "movielens", "--variant", "100k", "--data-dir",
              str(movielens_dir), "--no-download", "--model-path", str(saved_model), "--no-mlflow"]
    out = tmp_path / "ranked"
    done = _cli([*common, "--k", "100", "--ray-address", ray_cluster_info["address"],
                 "--num-workers", "2", "--output", str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    # every process of the cluster (gcs, raylets, the workers the export started) is on loopback
    addresses = listening_addresses(session_pids(ray_cluster_info["session"]))
    assert len(addresses) >= 4 and loopback_only(addresses), addresses
    reference = _single(movielens_dir, saved_model, tmp_path / "single.parquet", "--k", "100")
    shards = sorted(p.name for p in out.glob("*.parquet"))
    manifest = json.loads((out / "_manifest.json").read_text())
    assert shards == [s["file"] for s in manifest["shards"]] and len(shards) == 8  # 4 per worker
    assert manifest["rows"] == len(reference) == 943 * 100
    frame = pd.read_parquet(out)
    pd.testing.assert_frame_equal(frame, reference)
    assert not (tmp_path / "ranked.parts").exists()

    # sampled at T > 0 with a seed: the same draws wherever a user's shard ran
    sampled = ["--k", "10", "--temperature", "0.7", "--seed", "5"]
    out = tmp_path / "sampled"
    done = _cli([*common, *sampled, "--ray-address", ray_cluster_info["address"],
                 "--num-workers", "2", "--chunk-size", "100", "--output", str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    reference = _single(movielens_dir, saved_model, tmp_path / "sampled.parquet", *sampled)
    assert len(list(out.glob("*.parquet"))) == 10
    pd.testing.assert_frame_equal(pd.read_parquet(out), reference)
    ranked = pd.read_parquet(tmp_path / "single.parquet")
    assert (ranked.groupby("user_id").head(10)["item_id"].to_numpy() != reference["item_id"].to_numpy()).any()


def test_an_interrupted_export_resumes_by_shard(ray_cluster_info, saved_model, tmp_path, caplog):
    from recsys_ebm.distributed.export import distributed_export, read_dataset
    from recsys_ebm.export.writer import ExportConfig, export_recommendations
    from recsys_ebm.models import load_model

    model = load_model(saved_model)
    config = ExportConfig(k=20, temperature=0.5, seed=2)
    reference = pd.read_parquet(export_recommendations(
        model, tmp_path / "single.parquet", config=config, show_progress=False).path)
    out = tmp_path / "dataset"
    kwargs = dict(address=ray_cluster_info["address"], num_workers=2, shard_size=50,
                  config=config, show_progress=False)

    def stop(shard: int, n_shards: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distributed_export(model, out, on_shard=stop, **kwargs)
    # the stopped pipeline's fetcher threads ended before the driver disconnected (one left
    # inside ray.get after ray.shutdown() makes Ray end the whole process)
    assert not [t.name for t in threading.enumerate() if t.name.startswith(RAY_DATA_THREADS)]
    finished = sorted((tmp_path / "dataset.parts").glob("part-*.parquet"))
    assert 1 <= len(finished) < 19 and not out.exists()  # nothing visible before the commit
    # a shard whose file no longer matches its record is computed again, not trusted
    damaged = finished[0]
    damaged.write_bytes(finished[-1].read_bytes())
    result = distributed_export(model, out, resume=True, **kwargs)
    # (shards the workers finished after the interruption was seen are reused too)
    assert result.n_chunks == 19 and len(finished) - 1 <= result.resumed_chunks < 19
    assert f"part {int(damaged.name[5:11])} in" in caplog.text and "does not match" in caplog.text
    pd.testing.assert_frame_equal(read_dataset(out).to_pandas(), reference)
    pd.testing.assert_frame_equal(pd.read_parquet(out), reference)
    # a changed setting cannot resume a dataset's parts, and a fresh run replaces the dataset
    with pytest.raises(KeyboardInterrupt):
        distributed_export(model, out, on_shard=stop, **kwargs)
    with pytest.raises(ValueError, match="seed"):
        distributed_export(model, out, resume=True, **{**kwargs, "config": ExportConfig(k=20, seed=3)})
    pd.testing.assert_frame_equal(pd.read_parquet(out), reference)  # the old one is untouched
    # a folder the export did not write is refused before any work
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a directory this toolkit wrote"):
        distributed_export(model, tmp_path / "mine", **kwargs)
    assert not (tmp_path / "mine.parts").exists()


def test_ray_address_without_ray_names_the_extra(saved_model, movielens_dir, tmp_path, monkeypatch,
                                                 caplog):
    from recsys_ebm.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without the extra has
    code = main(["export", "--quiet", "--no-mlflow", "--data-dir", str(movielens_dir),
                 "--no-download", "--model-path", str(saved_model), "--output",
                 str(tmp_path / "out"), "--ray-address", "local"])
    assert code == 2
    assert 'pip install "recsys-ebm[ray]"' in caplog.text
    assert not (tmp_path / "out").exists()
    # and without --ray-address the export works as before
    assert main(["export", "--quiet", "--no-mlflow", "--data-dir", str(movielens_dir),
                 "--no-download", "--model-path", str(saved_model), "--k", "5", "--output",
                 str(tmp_path / "out.parquet")]) == 0
    assert np.all(pd.read_parquet(tmp_path / "out.parquet").groupby("user_id").size() == 5)


def test_a_faiss_served_model_exports_the_same_rows(ray_cluster_info, saved_model, tmp_path):
    """The FAISS index goes into the object store with the job: an HNSW-served export on the
    cluster is row for row the single-process one through the same index."""
    from recsys_ebm.distributed.export import distributed_export
    from recsys_ebm.experiments.jobs import serving_model
    from recsys_ebm.export.writer import ExportConfig, export_recommendations

    model = serving_model(saved_model, "hnsw")
    config = ExportConfig(k=20)
    reference = pd.read_parquet(export_recommendations(
        model, tmp_path / "single.parquet", config=config, show_progress=False).path)
    result = distributed_export(model, tmp_path / "dataset", address=ray_cluster_info["address"],
                                num_workers=2, config=config, show_progress=False)
    assert result.n_chunks == 8
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "dataset"), reference)


def test_settling_waits_for_ray_datas_threads_only():
    """Before the driver disconnects, Ray Data's fetcher threads started in the block are let
    finish (within a bound); other threads, and those already running, are not waited for."""
    release = threading.Event()
    before = set(threading.enumerate())
    fetcher = threading.Thread(target=lambda: time.sleep(0.4), name="iter_threaded", daemon=True)
    other = threading.Thread(target=release.wait, name="tqdm_monitor", daemon=True)
    fetcher.start()
    other.start()
    began = time.monotonic()
    settle_threads(before, timeout=5)
    assert not fetcher.is_alive() and other.is_alive() and time.monotonic() - began < 4
    stuck = threading.Thread(target=release.wait, name="StreamingExecutor-x", daemon=True)
    stuck.start()
    began = time.monotonic()
    settle_threads(before, timeout=0.3)  # a thread that does not end is given up on in time
    assert stuck.is_alive() and time.monotonic() - began < 2
    release.set()
