"""The source of the logged MLflow pyfunc model (MLflow's "models from code"): MLflow copies this
file into the logged model and runs it on load instead of unpickling an object.

It builds an empty :class:`recsys_ebm.tracking.pyfunc.RecommenderModel`; at load time its
``load_context`` imports the loaders named in the model's ``model_config`` and loads the saved
model artifact through them (hash-checked). Never imported by the toolkit itself.
"""

from mlflow.models import set_model

from recsys_ebm.tracking.pyfunc import RecommenderModel

set_model(RecommenderModel())
