"""A saved recsys_ebm model as an MLflow pyfunc model that serves its recommendations.

Input: a pandas DataFrame, one request per row (every column optional):

* ``user_id`` (string): the raw id of a trained user, as text (``"196"``);
* ``history`` (list of strings): raw item ids of a new user, folded in without retraining;
* ``ratings`` (list of floats, parallel to ``history``; MLflow's schema check refuses JSON
  integers there, write ``4.0``): required for rating models (``fits_ratings``, e.g. crbm),
  refused by the others;
* ``group`` (list of strings): raw ids of trained users watching together, with ``strategy``
  (string, default ``"poe"``: the product of experts; or ``average``, ``least-misery``,
  ``most-pleasure``, ``borda``, ``pseudo-user``) and ``weights`` (list of floats parallel to
  ``group``, default equal; a two-user taste mix is ``weights = [1 - λ, λ]``);
* ``k`` (int, default 10), ``temperature`` (float, default 0 = exact ranking; > 0 samples from
  softmax(score / T)), ``seed`` (int, default 0: the sampling seed).

A row gives exactly one of ``user_id``, ``history`` and ``group``. A column given must have a
value in every row; only ``user_id``, ``history``, ``ratings``, ``group``, ``strategy`` and
``weights`` may be None (JSON null; a missing key, which pandas reads as NaN, fails MLflow's
schema check). Output: a DataFrame with one row per
recommended item, columns ``request`` (row index of the input), ``user_id`` (as given; None for
a history, the members joined by commas for a group), ``rank`` (1 = best), ``item_id`` (raw id,
as text) and ``score`` (the model's score, i.e. minus the energy; the composed score for a
group). Each request is exactly ``model.recommend([user], k=k, temperature=temperature,
rng=seed)`` (``fold_in=True`` on a 1 x n_items history row for new users; for a group
``model.recommend_group(members, k, strategy=..., weights=...)``), items the user (any member)
already has left out. An unknown user or item, or a malformed row,
raises ``MlflowException`` (HTTP 400 from ``mlflow models serve``) naming the id and the row.

Nothing is pickled. The model is logged "from code" (MLflow's models from code): the logged
model holds the source file :mod:`recsys_ebm.tracking.recommender_code`, which builds a
:class:`RecommenderModel` with ``mlflow.models.set_model``, and the saved model directory as an
artifact. This package imports no model code: whoever logs the model names the functions that
load a saved model directory and its id maps (``recsys_ebm.models:load_model`` and
``recsys_ebm.experiments.jobs:saved_id_maps`` / ``raw_to_index`` for ``recsys-ebm train``) in the
model's ``model_config`` (:func:`loader_config`); ``load_context`` imports them by name (only
from recsys_ebm) and loads the artifact with the toolkit's ``load_model``, which checks every
file against the SHA-256s of its manifest before use. The serving process needs recsys_ebm
importable.
"""

from __future__ import annotations

import importlib
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

#: Output columns, in order.
OUTPUT_COLUMNS = ("request", "user_id", "rank", "item_id", "score")
#: Defaults of the optional per-request columns.
DEFAULTS = {"k": 10, "temperature": 0.0, "seed": 0}


def _bad_request(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _missing(value: Any) -> bool:
    """None / NaN / pd.NA (what an absent cell becomes in a DataFrame); lists are values."""
    if value is None:
        return True
    if isinstance(value, (list, tuple, np.ndarray)):
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


#: The logged model's source (read by MLflow, never imported by the toolkit).
MODEL_CODE = Path(__file__).with_name("recommender_code.py")
#: The loaders a :class:`RecommenderModel` needs, as ``model_config`` names them.
LOADERS = ("load_model", "id_maps", "to_index")
#: The one package loaders may be imported from.
LOADER_PACKAGE = "recsys_ebm"


def loader_config(**loaders: Callable) -> dict[str, str]:
    """The ``model_config`` of a logged model: each loader of :data:`LOADERS` as
    ``"module:name"``; ``ValueError`` for one that is not a module-level recsys_ebm function."""
    if set(loaders) != set(LOADERS):
        raise ValueError(f"give exactly the loaders {', '.join(LOADERS)}; got {sorted(loaders)}")
    config = {}
    for key, function in loaders.items():
        name = f"{function.__module__}:{function.__qualname__}"
        if resolve_loader(name) is not function:
            raise ValueError(f"loader {key} ({name}) cannot be imported by that name")
        config[key] = name
    return config


def resolve_loader(name: str) -> Callable:
    """The function named ``"module:name"``, imported from recsys_ebm only (``ValueError``
    otherwise: a logged model's config never imports code from elsewhere)."""
    module, _, attribute = str(name).partition(":")
    if not attribute or (module != LOADER_PACKAGE and not module.startswith(LOADER_PACKAGE + ".")):
        raise ValueError(f"loader {name!r}: must be 'module:function' inside {LOADER_PACKAGE}")
    function = getattr(importlib.import_module(module), attribute, None)
    if not callable(function):
        raise ValueError(f"loader {name!r}: {module} has no function {attribute}")
    return function


class RecommenderModel(mlflow.pyfunc.PythonModel):
    """Serve ``model.recommend`` for raw user ids and new users' histories (module docstring).

    ``load_model(path)`` loads the saved model directory (artifact ``"model"``);
    ``id_maps(model, path)`` returns its (user, item) id maps (``to_index`` / ``to_raw`` /
    ``raw_ids``); ``to_index(id_map, raw_ids, what)`` maps raw ids given as text to indices,
    raising ``KeyError`` / ``ValueError`` naming ``what`` and the id. Built without them (as
    the logged code does), ``load_context`` imports them by the names of the model's
    ``model_config`` (:func:`loader_config`).
    """

    def __init__(self, load_model: Callable | None = None, id_maps: Callable | None = None,
                 to_index: Callable | None = None) -> None:
        self._load_model = load_model
        self._id_maps = id_maps
        self._to_index = to_index
        self._loaded: tuple | None = None  # (model, user_map, item_map) once load_context ran

    def load_context(self, context) -> None:
        if self._load_model is None or self._id_maps is None or self._to_index is None:
            config = getattr(context, "model_config", None) or {}
            missing = [key for key in LOADERS if key not in config]
            if missing:
                raise MlflowException(f"the logged model's model_config lacks the loader(s) "
                                      f"{', '.join(missing)}; log it with loader_config(...)")
            self._load_model, self._id_maps, self._to_index = (
                resolve_loader(config[key]) for key in LOADERS)
        path = context.artifacts["model"]
        model = self._load_model(path)  # checks the manifest's SHA-256s first
        self._loaded = (model, *self._id_maps(model, path))

    def loaded(self, model_dir: str) -> RecommenderModel:
        """A copy with the model at ``model_dir`` loaded, as serving would (for examples)."""
        copy = RecommenderModel(self._load_model, self._id_maps, self._to_index)
        copy.load_context(SimpleNamespace(artifacts={"model": str(model_dir)}))
        return copy

    def input_example(self, n_history: int = 3) -> pd.DataFrame:
        """Three requests: the first trained user, a new user who has that user's first
        ``n_history`` items (rated the middle of the ratings seen in training), and the group
        of the first two trained users."""
        model, user_map, item_map = self._state()
        seen = getattr(model, "seen_items", None)
        items = (seen[0].indices[:n_history] if seen is not None and seen[0].nnz
                 else np.arange(min(n_history, model.n_items)))
        history = [str(raw) for raw in item_map.to_raw(items)]
        row = {"user_id": None, "history": history, "k": 5, "temperature": 0.0, "seed": 0}
        if getattr(model, "fits_ratings", False):
            row["ratings"] = [float(_example_rating(model))] * len(history)
        row.update(group=None, strategy=None, weights=None)
        first = {**row, "user_id": str(user_map.raw_ids[0]), "history": None}
        if "ratings" in row:
            first["ratings"] = None
        pair = [str(raw) for raw in user_map.raw_ids[:2]]
        group = {**first, "user_id": None, "group": pair, "strategy": "poe", "weights": [0.5, 0.5]}
        return pd.DataFrame([first, row, group])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """The recommendations of every request row (module docstring); ``context`` and
        ``params`` are unused (the signature is MLflow's)."""
        model, user_map, item_map = self._state()
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        frames = [self._answer(position, row) for position, (_, row)
                  in enumerate(model_input.iterrows())]
        if not frames:
            return pd.DataFrame({name: [] for name in OUTPUT_COLUMNS})
        return pd.concat(frames, ignore_index=True)

    def _state(self) -> tuple:
        if self._loaded is None:
            raise RuntimeError("load the model first (load_context, or loaded(model_dir))")
        return self._loaded

    def _answer(self, request: int, row: pd.Series) -> pd.DataFrame:
        """Recommendations for one input row as output rows."""
        model, user_map, item_map = self._state()
        user, history, group = row.get("user_id"), row.get("history"), row.get("group")
        has_user, has_history, has_group = not _missing(user), not _missing(history), not _missing(group)
        given = int(has_user) + int(has_history) + int(has_group)
        if given != 1:
            raise _bad_request(f"request {request}: give exactly one of user_id, history or group "
                               f"(got {'none' if given == 0 else given})")
        options = _options(request, row)
        if not has_group and not (_missing(row.get("strategy")) and _missing(row.get("weights"))):
            raise _bad_request(f"request {request}: strategy and weights are for a group")
        if has_group:
            ids, scores, user = self._group(request, row, group, options)
            has_user = True
        elif has_user:
            users = self._indices(user_map, [str(user)], f"request {request}: user_id")
            ids, scores = model.recommend(users, **options)
        else:
            matrix = self._history_row(request, history, row.get("ratings"))
            ids, scores = model.recommend(np.array([0]), matrix, fold_in=True, **options)
        keep = ids[0] >= 0
        items = item_map.to_raw(ids[0][keep])
        return pd.DataFrame({
            "request": np.full(len(items), request, dtype=np.int64),
            "user_id": pd.Series([str(user) if has_user else None] * len(items), dtype=object),
            "rank": np.arange(1, len(items) + 1, dtype=np.int64),
            "item_id": pd.Series([str(raw) for raw in items], dtype=object),
            "score": scores[0][keep].astype(np.float64)})

    def _group(self, request: int, row: pd.Series, group, options: dict) -> tuple:
        """``recommend_group`` for a request naming a group: ids (1, k), scores (1, k), label."""
        model, user_map, _ = self._state()
        raw = [str(u) for u in group]
        members = self._indices(user_map, raw, f"request {request}: group")
        strategy, weights = row.get("strategy"), row.get("weights")
        try:
            ids, scores = model.recommend_group(
                members, options["k"], strategy="poe" if _missing(strategy) else str(strategy),
                weights=None if _missing(weights) else [float(w) for w in weights],
                temperature=options["temperature"], rng=options["rng"])
        except (IndexError, TypeError, ValueError) as exc:
            raise _bad_request(f"request {request}: {exc}") from None
        return ids[None], scores[None], ",".join(raw)

    def _indices(self, id_map, raw_ids: list[str], what: str) -> np.ndarray:
        try:
            return np.asarray(self._to_index(id_map, raw_ids, what), dtype=np.int64)
        except KeyError as exc:
            raise _bad_request(str(exc.args[0])) from None
        except ValueError as exc:
            raise _bad_request(str(exc)) from None

    def _history_row(self, request: int, history, ratings):
        """A 1 x n_items CSR (value 1, or the rating) of a new user's history."""
        import scipy.sparse as sp

        model, _, item_map = self._state()
        where = f"request {request}: history"
        raw = [str(item) for item in history]
        if not raw:
            raise _bad_request(f"{where} is empty; give raw item ids")
        values = np.ones(len(raw), dtype=np.float32)
        if getattr(model, "fits_ratings", False):
            if _missing(ratings) or len(ratings) != len(raw):
                raise _bad_request(f"{where}: this model predicts ratings; give a ratings list "
                                   f"parallel to history ({len(raw)} numbers)")
            try:
                values = np.asarray([float(r) for r in ratings], dtype=np.float32)
            except (TypeError, ValueError):
                raise _bad_request(f"request {request}: ratings must be numbers, got "
                                   f"{list(ratings)}") from None
        elif not _missing(ratings):
            raise _bad_request(f"request {request}: ratings are for rating models; this model "
                               "ranks implicit feedback")
        items = self._indices(item_map, raw, where)
        unique, counts = np.unique(items, return_counts=True)
        if np.any(counts > 1):
            repeated = ", ".join(map(str, item_map.to_raw(unique[counts > 1])))
            raise _bad_request(f"{where} names item(s) {repeated} more than once")
        return sp.csr_matrix((values, (np.zeros(len(items), np.int64), items)),
                             shape=(1, model.n_items))


def _options(request: int, row: pd.Series) -> dict[str, Any]:
    """``k``, ``temperature`` and ``rng`` for ``recommend`` from a row (defaults when absent)."""
    values = {name: row.get(name) for name in DEFAULTS}
    values = {name: DEFAULTS[name] if _missing(value) else value for name, value in values.items()}
    try:
        k, temperature, seed = int(values["k"]), float(values["temperature"]), int(values["seed"])
    except (TypeError, ValueError):
        raise _bad_request(f"request {request}: k and seed must be integers, temperature a "
                           f"number; got {values}") from None
    if k < 1:
        raise _bad_request(f"request {request}: k must be >= 1, got {k}")
    if not math.isfinite(temperature) or temperature < 0:
        raise _bad_request(f"request {request}: temperature must be >= 0, got {temperature}")
    return {"k": k, "temperature": temperature, "rng": seed}


def _example_rating(model) -> float:
    """A rating the model accepts, for the input example: its middle rating level if it has
    levels (crbm's ``levels``), else 1."""
    levels = getattr(model, "levels", None)
    if levels is not None and len(levels):
        return float(np.asarray(levels)[len(levels) // 2])
    return 1.0


def example_and_signature(python_model: RecommenderModel, model_dir: str):
    """The input example of the model at ``model_dir`` and the signature inferred from it and
    its answer, every input column optional (a request names a user or a history)."""
    from mlflow.models import infer_signature
    from mlflow.types.schema import ColSpec, Schema

    loaded = python_model.loaded(model_dir)
    example = loaded.input_example()
    with warnings.catch_warnings():  # "integer columns cannot hold missing values": optional
        warnings.simplefilter("ignore", UserWarning)  # columns are omitted, not sent as NaN
        signature = infer_signature(example, loaded.predict(None, example))
    signature.inputs = Schema([ColSpec(spec.type, spec.name, required=False)
                               for spec in signature.inputs.inputs])
    return example, signature


def serving_requirements() -> list[str]:
    """pip requirements of the serving process, pinned to the versions installed here (no
    network lookup); recsys_ebm itself must be importable where the model is served."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in ("mlflow", "numpy", "pandas", "scipy", "torch"):
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return pins
