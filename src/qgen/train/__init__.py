"""Training: optimizers and schedules, the loop with the Jiang et al. stopping rule, checkpoints."""

from qgen.train.loop import TrainResult, save_model, train_run
from qgen.train.optim import build_optimizer, lr_at

__all__ = ["TrainResult", "build_optimizer", "lr_at", "save_model", "train_run"]
