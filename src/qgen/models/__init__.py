"""Models built from quantizable layers: MLP and the NiN CNN of Jiang et al. (2019)."""

from qgen.models.build import build_model, model_from_payload, read_model_file
from qgen.models.mlp import MLP
from qgen.models.nin import NiN

__all__ = ["MLP", "NiN", "build_model", "model_from_payload", "read_model_file"]
