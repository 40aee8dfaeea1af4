"""MLflow runs: open a tracking store quickly and log params, metrics and artifacts to one run.

Where runs are stored, first match wins:

1. the ``tracking_uri`` argument (CLI ``--tracking-uri``: a ``sqlite:///...`` path, an
   ``http://host:port`` server, ...): what a caller spells out wins, as in MLflow itself;
2. the ``MLFLOW_TRACKING_URI`` environment variable, so a shell or CI job can redirect every run
   without editing pipeline files;
3. MLflow's own default, which we keep. For MLflow 3.x (3.17 checked) that is a SQLite store
   ``sqlite:///mlflow.db`` in the working directory, with artifacts under ``./mlruns/<experiment
   id>/``. Only when ``./mlruns`` already holds experiments from an older MLflow does MLflow fall
   back to that file store, which 3.x refuses unless ``MLFLOW_ALLOW_FILE_STORE=true``.

The store is checked when a ``Tracker`` starts its run, before any work is done: an unsupported
scheme, an unreachable server or a store that cannot be opened raises
:class:`~recsys_ebm.errors.TrackingError` naming the URI, within seconds. For ``http(s)://``
servers the requests made while the run starts use short limits, each set only when the
variable is not already in the environment (MLflow's defaults would retry for about four
minutes):

* ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``: retries after the first attempt (ours: 2);
* ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR``: seconds, doubled after each retry (ours: 1);
* ``MLFLOW_HTTP_REQUEST_TIMEOUT``: seconds per request, to connect and to answer (ours: 3).

A closed port thus fails in about 3 s, a host that never answers in about 12 s. Once the run
is started, logging uses MLflow's own values again, so a long training survives a short outage.
Database stores (``sqlite:///...``, ``postgresql://...``) are opened once, without MLflow's
retry loop of about 100 s; a missing directory of a SQLite file is created, as MLflow does (and
as it does for the directory of a file store).

``Tracker`` talks to the store through an explicit ``MlflowClient``, never through MLflow's global
"active run", so several trackers (or tests) cannot leak state into each other::

    with Tracker("ml100k", run_name="sweep") as tracker:
        tracker.log_dataset("ml-100k", checksum, n_users=943)
        with tracker.child("dot_ebm") as run:
            run.log_params(asdict(config))
            model.fit(train, callback=run.log_epoch)
            run.log_metrics(summary)
"""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
import re
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.store.db.db_types import DATABASE_ENGINES
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from mlflow.utils.uri import get_uri_scheme

from recsys_ebm.errors import TrackingError
from recsys_ebm.tracking.quiet import quiet_mlflow

logger = logging.getLogger(__name__)

# MLflow's per-request limits (mlflow.utils.validation); older clients do not split batches.
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
# MLflow accepts word characters, '.', '-', ' ', '/' (and ':' except on Windows; we drop it).
_BAD_NAME_CHARS = re.compile(r"[^\w.\- /]")
# Limits for the HTTP requests made while a run starts, unless the environment sets them.
START_HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                     "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                     "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}
# MLflow's hints while logging the pyfunc model that do not apply to it: its integer input
# columns are optional (omitted, not sent as NaN) and its signature is given, not type hints.
_MODEL_LOG_HINTS = (".*Integer columns in Python cannot represent missing values",
                    ".*Add type hints to the `predict` method")
# What opening a store can raise besides MlflowException (requests' errors are OSErrors).
_STORE_ERRORS: tuple[type[BaseException], ...] = (MlflowException, OSError, ValueError,
                                                  ImportError)
try:
    from sqlalchemy.exc import SQLAlchemyError
except ImportError:  # mlflow-skinny: no database stores at all
    pass
else:
    _STORE_ERRORS += (SQLAlchemyError,)


def _git(*args: str, cwd: str | Path | None) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):  # no git, not a repo, no commit yet
        return None
    return done.stdout.strip()


def git_commit(cwd: str | Path | None = None) -> str | None:
    """SHA of ``HEAD`` of the repository containing ``cwd`` (default: working directory)."""
    return _git("rev-parse", "HEAD", cwd=cwd)


def git_dirty(cwd: str | Path | None = None) -> bool | None:
    """Whether tracked files differ from ``HEAD`` (untracked files such as mlflow.db don't count)."""
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=cwd)
    return None if status is None else bool(status)


def sanitize_name(name: str) -> str:
    """Turn ``name`` into a key MLflow accepts: ``"ndcg@10"`` -> ``"ndcg_at_10"``."""
    clean = _BAD_NAME_CHARS.sub("_", str(name).replace("@", "_at_"))
    # MLflow also rejects names that would resolve to another path ("/x", "a//b", "a/../b").
    if clean.startswith("/") or posixpath.normpath(clean) != clean:
        clean = clean.replace("/", "_")
    if clean.startswith("."):
        clean = "_" + clean
    if not clean:
        raise ValueError("empty metric/param name")
    return clean


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"model": {"dim": 64}}`` -> ``{"model.dim": "64"}``; values become strings."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _jsonable(obj: Any) -> Any:
    return obj.tolist() if hasattr(obj, "tolist") else str(obj)  # numpy scalars/arrays, paths


def _describe(uri: str, from_env: bool) -> str:
    return f"MLflow tracking URI {uri!r}" + (" (from $MLFLOW_TRACKING_URI)" if from_env else "")


@contextmanager
def _start_http_limits() -> Iterator[None]:
    """Apply START_HTTP_LIMITS for the variables the environment does not set; undo on exit."""
    added = [name for name in START_HTTP_LIMITS if name not in os.environ]
    os.environ.update({name: START_HTTP_LIMITS[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@contextmanager
def _store_errors(uri: str, from_env: bool) -> Iterator[None]:
    """Turn the failures of a store that cannot be used into TrackingError naming ``uri``."""
    where = _describe(uri, from_env)
    try:
        yield
    except UnsupportedModelRegistryStoreURIException as exc:
        schemes = ", ".join(repr(s) if s == "" else s for s in exc.supported_uri_schemes)
        raise TrackingError(f"{where}: unsupported scheme {get_uri_scheme(uri)!r}; supported "
                            f"schemes: {schemes} ('' = a local path)") from exc
    except _STORE_ERRORS as exc:
        hint = ""
        if get_uri_scheme(uri) in ("http", "https"):
            limits = ", ".join(f"{name}={os.environ.get(name, value)}"
                               for name, value in START_HTTP_LIMITS.items())
            hint = (f" (is the server running? limits while starting the run: {limits}; "
                    "set these variables to wait longer)")
        raise TrackingError(f"{where} cannot be used: {type(exc).__name__}: {exc}{hint}") from exc


def _open_database(uri: str) -> None:
    """Open a database store once, instead of MLflow's retry loop, to fail fast on a bad one."""
    import sqlalchemy

    url = sqlalchemy.engine.make_url(uri)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)  # as MLflow does
    engine = sqlalchemy.create_engine(url)
    try:
        sqlalchemy.inspect(engine).get_table_names()
    finally:
        engine.dispose()


def open_store(tracking_uri: str | None, experiment: str) -> tuple[MlflowClient, str]:
    """A client for ``tracking_uri`` (default: ``$MLFLOW_TRACKING_URI``, else MLflow's own) and
    the id of ``experiment`` there, created if missing; raises TrackingError if the store cannot
    be used, quickly (see the module docstring)."""
    uri = tracking_uri or mlflow.get_tracking_uri()
    from_env = uri == os.environ.get("MLFLOW_TRACKING_URI")
    with _store_errors(uri, from_env), _start_http_limits():
        if get_uri_scheme(uri) in DATABASE_ENGINES:
            _open_database(uri)
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(experiment)
        experiment_id = (found.experiment_id if found is not None
                         else client.create_experiment(experiment))
    return client, experiment_id


class Tracker:
    """One MLflow run, used as a context manager; ``enabled=False`` turns every method into a no-op.

    Leaving the ``with`` block ends the run as FINISHED, or FAILED if an exception escaped
    (KILLED for Ctrl-C). The run is tagged ``git_commit`` and ``git_dirty`` ("unknown" outside a
    git repository) plus MLflow's usual source/user tags and ``tags``.
    """

    def __init__(self, experiment: str = "recsys_ebm", *, tracking_uri: str | None = None,
                 run_name: str | None = None, tags: dict | None = None,
                 enabled: bool = True, quiet: bool = False) -> None:
        self.experiment = experiment
        self.tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        self.run_name = run_name
        self.tags = dict(tags or {})
        self.enabled = enabled
        #: keep MLflow's own INFO lines, progress bars and pickle warning off the terminal
        self.quiet = quiet
        self._quiet = ExitStack()
        self._client: MlflowClient | None = None  # set only while the run is active
        self._run = None
        self._experiment_id: str | None = None
        self._parent: Tracker | None = None

    def __enter__(self) -> Tracker:
        if not self.enabled:
            return self
        if self._client is not None:
            raise RuntimeError("this Tracker's run is already active; use child() to nest runs")
        if self.quiet:
            self._quiet.enter_context(quiet_mlflow())
        try:
            return self._start()
        except BaseException:
            self._quiet.close()
            raise

    def _start(self) -> Tracker:
        tags = {"git_commit": git_commit() or "unknown",
                "git_dirty": {True: "true", False: "false", None: "unknown"}[git_dirty()]}
        if self._parent is not None:
            if self._parent._client is None:
                raise RuntimeError("enter the parent Tracker before its child")
            client, experiment_id = self._parent._client, self._parent._experiment_id
            tags[MLFLOW_PARENT_RUN_ID] = self._parent.run_id
        else:
            client, experiment_id = open_store(self.tracking_uri, self.experiment)
        tags.update({key: str(value) for key, value in self.tags.items()})
        with _store_errors(client.tracking_uri, from_env=False), _start_http_limits():
            self._run = client.create_run(experiment_id, tags=resolve_tags(tags),
                                          run_name=self.run_name)
        self._client, self._experiment_id = client, experiment_id
        logger.info("MLflow run %s (%s) in experiment %r at %s", self.run_id,
                    self._run.info.run_name, self.experiment, client.tracking_uri)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        if self._client is None:
            return
        with self._quiet:  # restored once the run has ended
            self._end(exc_type)

    def _end(self, exc_type: type[BaseException] | None) -> None:
        status = ("FINISHED" if exc_type is None
                  else "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")
        self._client.set_terminated(self.run_id, status=status)
        self._client = None
        logger.info("MLflow run %s ended: %s", self.run_id, status)

    def child(self, run_name: str, tags: dict | None = None) -> Tracker:
        """A Tracker for a run nested under this one (``mlflow.parentRunId``); enter it inside."""
        child = Tracker(self.experiment, tracking_uri=self.tracking_uri, run_name=run_name,
                        tags={**self.tags, **(tags or {})}, enabled=self.enabled, quiet=self.quiet)
        child._parent = self
        return child

    @property
    def run_id(self) -> str | None:
        """ID of the run (kept after the block ends); None when disabled or not yet entered."""
        return None if self._run is None else self._run.info.run_id

    @property
    def artifact_uri(self) -> str | None:
        return None if self._run is None else self._run.info.artifact_uri

    def _active(self) -> MlflowClient:
        if self._client is None:
            raise RuntimeError("log inside the Tracker's `with` block")
        return self._client

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log (nested) params under dotted keys, as strings."""
        if not self.enabled:
            return
        client = self._active()
        entries = [Param(sanitize_name(k), v) for k, v in flatten_params(params).items()]
        for batch in _chunks(entries, MAX_PARAMS_PER_BATCH):
            client.log_batch(self.run_id, params=batch)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log numeric metrics at ``step``; non-finite values are skipped with a warning."""
        if not self.enabled:
            return
        client = self._active()
        now = int(time.time() * 1000)
        entries = []
        for name, value in metrics.items():
            value = float(value)
            if not math.isfinite(value):
                logger.warning("not logging metric %r = %s (step %s): not finite", name, value, step)
                continue
            entries.append(Metric(sanitize_name(name), value, now, step or 0))
        for batch in _chunks(entries, MAX_METRICS_PER_BATCH):
            client.log_batch(self.run_id, metrics=batch)

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """``log_metrics(metrics, step=epoch)``; pass as a model's ``fit(callback=...)``."""
        self.log_metrics(metrics, step=epoch)

    def log_dataset(self, name: str, checksum: str, **info: Any) -> None:
        """Params ``dataset``, ``dataset_checksum`` and ``dataset_<key>`` for each ``info``."""
        self.log_params({"dataset": name, "dataset_checksum": checksum,
                         **{f"dataset_{key}": value for key, value in info.items()}})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        client = self._active()
        entries = [RunTag(k, str(v)) for k, v in tags.items()]
        for batch in _chunks(entries, MAX_PARAMS_PER_BATCH):
            client.log_batch(self.run_id, tags=batch)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self._active().log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, dir: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self._active().log_artifacts(self.run_id, str(dir), artifact_path)

    def log_text(self, text: str, filename: str) -> None:
        """Store ``text`` as the artifact ``filename`` (may contain '/' subdirectories)."""
        if self.enabled:
            self._active().log_text(self.run_id, text, filename)

    def log_dict(self, obj: Any, filename: str) -> None:
        """Store ``obj`` as a JSON artifact (numpy values via ``tolist``)."""
        self.log_text(json.dumps(obj, indent=2, default=_jsonable), filename)

    def log_table(self, frame: Any, filename: str) -> None:
        """Store a pandas DataFrame as a CSV artifact; a named index is kept as columns."""
        if not self.enabled:
            return
        client = self._active()
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / posixpath.basename(filename)
            frame.to_csv(local, index=any(n is not None for n in frame.index.names))
            client.log_artifact(self.run_id, str(local), posixpath.dirname(filename) or None)

    def log_figure(self, figure: Any, filename: str) -> None:
        """Store a matplotlib figure as the image artifact ``filename``, then close it."""
        if not self.enabled:
            return
        try:
            self._active().log_figure(self.run_id, figure, filename)
        finally:
            import matplotlib.pyplot as plt

            plt.close(figure)

    def log_input_frame(self, frame: Any, name: str, digest: str, source: str,
                        context: str = "train") -> None:
        """Record the pandas ``frame`` as an input dataset of the run (``run.inputs``), named
        ``name`` with ``digest`` (a checksum; cut to MLflow's 36 characters) and ``source``."""
        if not self.enabled:
            return
        from mlflow.data.pandas_dataset import from_pandas
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        with warnings.catch_warnings():  # "source can be interpreted in multiple ways" and
            warnings.simplefilter("ignore", UserWarning)  # the integer-column hint of its schema
            dataset = from_pandas(frame, source=source, name=name, digest=digest[:36])
            entity = Dataset(**dataset.to_dict())
        entity = DatasetInput(entity,
                              tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
        self._active().log_inputs(self.run_id, datasets=[entity])

    def log_recommender(self, model_dir: str | Path, *, load_model: Any, id_maps: Any,
                        to_index: Any, name: str = "recommender",
                        register: str | None = None) -> str | None:
        """Log the saved model at ``model_dir`` as an MLflow pyfunc model ``name`` of this run
        (see recsys_ebm.tracking.pyfunc; the loaders are that module's RecommenderModel
        arguments, module-level recsys_ebm functions: the logged model names them), with its
        signature and input example; ``register`` also makes it a version of that registered
        model. Logged from code: the model holds source and the hash-checked model directory,
        no pickle. Returns the ``runs:/<run id>/<name>`` URI (None if disabled)."""
        if not self.enabled:
            return None
        from mlflow.models import Model

        from recsys_ebm.tracking.pyfunc import (
            MODEL_CODE,
            RecommenderModel,
            example_and_signature,
            loader_config,
            serving_requirements,
        )

        client = self._active()
        python_model = RecommenderModel(load_model, id_maps, to_index)
        config = loader_config(load_model=load_model, id_maps=id_maps, to_index=to_index)
        example, signature = example_and_signature(python_model, str(model_dir))
        logged = client.create_logged_model(self._experiment_id, name=name,
                                            source_run_id=self.run_id)
        with _global_tracking_uri(client.tracking_uri), warnings.catch_warnings():
            for hint in _MODEL_LOG_HINTS:
                warnings.filterwarnings("ignore", message=hint, category=UserWarning)
            Model.log(None, name=name, flavor=mlflow.pyfunc, run_id=self.run_id,
                      model_id=logged.model_id, python_model=str(MODEL_CODE),
                      model_config=config, artifacts={"model": str(model_dir)}, signature=signature,
                      input_example=example, pip_requirements=serving_requirements(),
                      registered_model_name=register)
        return f"runs:/{self.run_id}/{name}"


    def log_training_figures(self, model: Any, test: Any) -> None:
        """Figures of a fitted ``model``: ``figures/training_curve.png`` (its per-epoch metrics,
        when it has any) and ``figures/energy_histogram.png`` (scores of the ``test`` (CSR)
        items vs the other unseen items of a sample of users)."""
        if not self.enabled:
            return
        from recsys_ebm.tracking import figures

        epochs = list(getattr(getattr(model, "history", None), "epochs", None) or [])
        curve = figures.training_curve(epochs)
        if curve is not None:
            self.log_figure(curve, "figures/training_curve.png")
        held_out, other = figures.held_out_scores(model, test)
        if held_out.size:
            title = f"{type(model).__name__}: held-out vs other unseen items"
            self.log_figure(figures.score_histogram(held_out, other, title),
                            "figures/energy_histogram.png")

@contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's model logging reads the global tracking URI: point it at ``uri`` meanwhile."""
    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
