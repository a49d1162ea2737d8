"""Reproduce BiT's published tables in one command: VTAB-1k, the official few-shot table, the paper's full-data table.

- `definitions`: the suites as data (`SUITES`): each task's TFDS builder,
  splits, label function and augmentation, and the published figures with
  where they come from.
- `runner`: `reproduce(suite, variant, ...)`, which fine-tunes each task with
  `BiTFineTuner` (or evaluates the released per-task VTAB models), writes
  each finished run at once and resumes after an interruption.
- `report`: the table (measured beside published), results.json, the figure.

`bit-keras reproduce SUITE --variant ...` is the command line (docs/reproduce.md).

Example:

>>> from bit_keras import suites
>>> suite = suites.get("vtab1k")
>>> len(suite.tasks), suite.task("dsprites-xpos").num_classes
(19, 16)
>>> suite.task("caltech101").train_split()
'train[:800]+train[2754:2954]'
"""

from bit_keras.suites.definitions import FEWSHOT_SUITE, GROUPS, PAPER_SUITE, SUITES, VTAB_SUITE, Figure, Suite, Task, get
from bit_keras.suites.runner import RESULTS, load_split, reproduce
