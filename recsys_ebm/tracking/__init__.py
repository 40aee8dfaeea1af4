"""MLflow experiment tracking; the only package in recsys_ebm that imports mlflow.

``store`` opens tracking stores and logs runs (:class:`Tracker`), ``pyfunc`` wraps a saved
model as an MLflow pyfunc model that serves its recommendations, ``figures`` draws the plots
logged with a training run. The names below are the package's API; import them from here.
"""

from recsys_ebm.tracking.store import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_PER_BATCH,
    START_HTTP_LIMITS,
    Tracker,
    flatten_params,
    git_commit,
    git_dirty,
    open_store,
    sanitize_name,
)

__all__ = ["MAX_METRICS_PER_BATCH", "MAX_PARAMS_PER_BATCH", "START_HTTP_LIMITS", "Tracker",
           "flatten_params", "git_commit", "git_dirty", "open_store", "sanitize_name"]
