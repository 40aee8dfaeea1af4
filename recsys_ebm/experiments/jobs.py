"""Serving jobs: pick the model to serve (a saved one, or one trained first the way ``train``
does), optionally behind a FAISS index, and export its recommendations for every user.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from recsys_ebm.data.ids import IdMap
from recsys_ebm.data.interactions import Interactions
from recsys_ebm.errors import DataError
from recsys_ebm.experiments import runner
from recsys_ebm.export.writer import ExportConfig, ExportResult, export_recommendations
from recsys_ebm.models import load_model
from recsys_ebm.models.base import Recommender

logger = logging.getLogger(__name__)


def saved_id_maps(model: Recommender, model_path: str | Path) -> tuple[IdMap, IdMap]:
    """The raw-id maps saved with a model by ``train``; ``DataError`` when they are missing or
    do not match the model's shape."""
    meta = getattr(model, "meta", {}) or {}
    if "user_ids" not in meta or "item_ids" not in meta:
        raise DataError(f"{model_path}: the saved model has no id maps (was it saved by train?)")
    user_map, item_map = IdMap.from_list(meta["user_ids"]), IdMap.from_list(meta["item_ids"])
    if len(user_map) != model.n_users or len(item_map) != model.n_items:
        raise DataError(f"{model_path}: id maps ({len(user_map)} users, {len(item_map)} items) do not "
                        f"match the model ({model.n_users} users, {model.n_items} items)")
    return user_map, item_map


def serving_model(model_path: str | Path, index: str | None = None) -> Recommender:
    """A saved model, served through its FAISS index of kind ``index`` when given (built once
    and saved beside the model as ``index-<kind>/``)."""
    model = load_model(model_path)
    if index is None:
        return model
    from recsys_ebm.models.indexed import IndexedRecommender

    return IndexedRecommender.for_saved(model, model_path, index)


def export_job(dataset: Any, output: str | Path, *, model_name: str = "dpebm",
               model_path: str | Path | None = None, options: dict[str, Any] | None = None,
               refit: bool = True, config: ExportConfig | None = None, resume: bool = False,
               index: str | None = None, filter_items: list[str] | None = None,
               filter_seen: bool = True, tracker: Any = None,
               show_progress: bool = True, ray_address: str | None = None, num_workers: int = 2,
               shard_size: int | None = None) -> ExportResult:
    """``recsys-ebm export``: a saved model (``model_path``), or ``model_name`` trained first
    with ``options`` the way ``recsys-ebm train`` does (random protocol, early stopping on a
    validation split carved from train, refit on all of train), exported for every user.

    A saved model's export leaves out its seen set (the interactions it was fitted on), the
    same set ``recommend`` leaves out, so export and recommend serve the same lists. A model
    trained here is fitted on the protocol's train part only, so its export leaves out every
    interaction the data set holds for a user (train and test): nobody is served what they
    already have.

    Parameters
    ----------
    dataset : a :class:`recsys_ebm.experiments.runner.Dataset` (``runner.load_dataset``).
    index : serve through a FAISS index of this kind (``flat``, ``hnsw``, ``ivf``); needs
        ``model_path`` (the index is saved beside the model).
    filter_items : raw item ids never exported (a block-list); ``filter_seen=False`` exports
        the users' seen items too.
    ray_address : export on this Ray cluster (``local``, ``auto``, ``HOST:PORT``) with
        ``num_workers`` workers, to a partitioned Parquet dataset of ``shard_size`` users per
        file (:func:`recsys_ebm.distributed.export.distributed_export`).
    """
    config = config if config is not None else ExportConfig()
    known = None  # what the export leaves out beyond the model's seen set
    if model_path is not None:
        model = serving_model(model_path, index)
        user_map, item_map = saved_id_maps(model, model_path)
        meta = getattr(model, "meta", {}) or {}
        if meta.get("dataset_checksum") not in (None, dataset.checksum):
            logger.warning("%s was trained on another copy of the data (checksum %s..., this one %s...)",
                           model_path, str(meta["dataset_checksum"])[:12], dataset.checksum[:12])
        source = str(model_path)
    else:
        if index is not None:
            raise ValueError("--index serves a saved model: give --model-path (train one first)")
        split = runner.make_split(dataset.ratings, "random", seed=0)
        prepared = runner.prepare(split, "random")
        model = runner.fit_with_validation(model_name, options or {}, prepared, refit=refit,
                                           callback=tracker.log_epoch if tracker is not None else None,
                                           show_progress=show_progress)
        user_map, item_map = prepared.train.user_map, prepared.train.item_map
        source = f"trained {model_name}"
        known = Interactions.from_frame(dataset.ratings, user_map=user_map, item_map=item_map,
                                        name="known").user_items
    if tracker is not None:
        tracker.log_params({"model": model_name if model_path is None else type(model).__name__,
                            "model_source": source, "refit": refit, "index": index or "none",
                            "config": options or {}})  # the names train logs them under
        tracker.log_dataset(dataset.name, dataset.checksum, source=dataset.source,
                            n_users=len(user_map), n_items=len(item_map))
    blocked = None if filter_items is None else raw_to_index(item_map, filter_items, "--filter-items")
    if ray_address is not None:
        from recsys_ebm.distributed.export import distributed_export

        return distributed_export(model, output, address=ray_address, num_workers=num_workers,
                                  shard_size=shard_size, raw_user_ids=user_map.raw_ids,
                                  raw_item_ids=item_map.raw_ids, config=config, resume=resume,
                                  show_progress=show_progress, tracker=tracker, user_items=known,
                                  filter_items=blocked, filter_seen=filter_seen)
    return export_recommendations(model, output, raw_user_ids=user_map.raw_ids,
                                  raw_item_ids=item_map.raw_ids, config=config, resume=resume,
                                  show_progress=show_progress, tracker=tracker, user_items=known,
                                  filter_items=blocked, filter_seen=filter_seen)


def raw_to_index(id_map: IdMap, raw_ids: list[str], what: str):
    """Internal ids of raw ids given as text (command line, request), in the map's id type;
    ``ValueError`` / ``KeyError`` name ``what`` and the offending id."""
    import numpy as np

    try:
        raw = np.asarray(raw_ids).astype(id_map.raw_ids.dtype)
    except ValueError:
        raise ValueError(f"{what}: ids must be of the model's id type ({id_map.raw_ids.dtype}), "
                         f"got {list(raw_ids)}") from None
    try:
        return id_map.to_index(raw)
    except KeyError as exc:
        raise KeyError(f"{what}: {exc.args[0]}: not known to this model") from None
