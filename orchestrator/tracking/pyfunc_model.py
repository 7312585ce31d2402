"""The champion as an MLflow model from code, for models torch.export cannot serve (text
categories as inputs, or a module it cannot trace): ``mlflow.pyfunc.load_model`` runs this
file, which rebuilds the network from the pickle-free form (``weights.pt`` loaded with
``weights_only=True``, ``model.json``) and predicts from a DataFrame of raw columns.

What it needs where it is loaded: this package installed (and the model's factory, for a
user's own model: the spec names its import path, and loading it this way trusts it). The
orchestrator's own server never runs this file: it reads the two files itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class Champion(PythonModel):
    """Raw columns in, the task's outputs out: class or label probabilities, or values."""

    def load_context(self, context: Any) -> None:
        """Rebuild the network from the weights and the spec logged beside this file."""
        import json

        from orchestrator.core import modelfile

        folder = Path(context.artifacts[modelfile.MODEL_FILE]).parent
        raw = json.loads((folder / modelfile.MODEL_FILE).read_text())
        kind = str((raw.get("model") or {}).get("kind", "mlp"))  # loading this trusts it
        self.net, self.spec = modelfile.load_weights(folder, factories=(kind,))

    # no type hints: MLflow reads them as a schema (and warns that Any is none)
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        """The outputs for a DataFrame (or a list of records) of the training columns."""
        import pyarrow as pa
        import torch

        from orchestrator.core import features, model

        table = (
            pa.Table.from_pandas(model_input, preserve_index=False)
            if hasattr(model_input, "columns")
            else pa.Table.from_pylist(list(model_input))
        )
        x = features.encode(self.spec.encoding, table)
        with torch.no_grad():
            return model.Outputs(self.net, self.spec.task)(torch.from_numpy(x)).numpy()


mlflow.models.set_model(Champion())
