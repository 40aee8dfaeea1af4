"""MLflow without its chatter: what a run started with ``--quiet`` keeps off the terminal.

MLflow logs at INFO while it opens a database store ("Creating initial MLflow database
tables..."), validates the logged model's input example, and draws progress bars while it
reads the logged model back. :func:`quiet_mlflow` silences these for the time of a block and
puts everything back after it; MLflow's warnings and errors still show.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

#: MLflow's loggers kept at WARNING and above in a quiet block
MLFLOW_LOGGERS = ("mlflow", "alembic")
#: MLflow reads this each time it would draw an artifact progress bar
PROGRESS_BAR_VARIABLE = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@contextmanager
def quiet_mlflow() -> Iterator[None]:
    """Within the block: MLflow's loggers at WARNING, no artifact progress bars. Nested
    blocks restore in turn."""
    loggers = [logging.getLogger(name) for name in MLFLOW_LOGGERS]
    levels = [log.level for log in loggers]
    previous_bar = os.environ.get(PROGRESS_BAR_VARIABLE)
    for log in loggers:
        log.setLevel(max(log.getEffectiveLevel(), logging.WARNING))
    os.environ[PROGRESS_BAR_VARIABLE] = "false"
    try:
        yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)
        if previous_bar is None:
            os.environ.pop(PROGRESS_BAR_VARIABLE, None)
        else:
            os.environ[PROGRESS_BAR_VARIABLE] = previous_bar
