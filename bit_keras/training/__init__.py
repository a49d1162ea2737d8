"""Training under `BiTFineTuner` and `BiTPretrainer`: one engine, its optimizer, its losses and its backups.

- `engine`: `Engine`, which runs a recipe's optimizer updates on any
  strategy, with backups, resume, the NaN stop and the best model.
- `optimizer`: `AccumulatingSGD`, SGD with momentum that updates once per
  global batch however it is split.
- `losses`: `loss_function` (the trainers' `loss=` names) and
  `SigmoidCrossEntropy`, BiT's upstream loss.
- `backups`: `Backups`, the best model (`best.keras`) and `run_lock`, one
  run per checkpoint folder.

Backend-agnostic: it needs no TensorFlow unless the strategy does.
"""

from bit_keras.training.backups import BACKUP_FOLDER, BEST_MODEL, LOCK, Backups, run_lock
from bit_keras.training.engine import EVALUATIONS_PER_RUN, NAN_CHECK_EVERY, XLA_MIN_UPDATES, Engine
from bit_keras.training.losses import SigmoidCrossEntropy, loss_function
from bit_keras.training.optimizer import AccumulatingSGD
