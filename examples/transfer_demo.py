"""BiT's promise with nothing downloaded: pre-train on generated glyphs, export, few-shot transfer to the digits, compare.

    python -m examples.transfer_demo                 # from the repository root
    python examples/transfer_demo.py --out my_run    # from anywhere
    bit-keras demo                                   # the same, as the console command

Pre-trains a small BiT with `bit_keras.BiTPretrainer` on procedural glyphs
generated on the fly (100 classes of random pen strokes), exports it with
`hub_export.export` and reads it back, fine-tunes it with
`bit_keras.BiTFineTuner` on scikit-learn's digits, all ten unseen upstream,
from 1, 2, 5, 10 examples per class and the full split (several seeds), trains
the same model from scratch with the same budget, fits a linear probe on the
exported features, and prints and plots the comparison. Under 5 minutes on 2
CPU cores; `--seeds 1 --shots 1,full` is quicker; `--upstream digits` runs the
earlier digits 0-4 to 5-9 demo. The code is `bit_keras/demo.py` (`bit-keras
demo` runs it too); `--help` lists the flags.
"""

import sys

from bit_keras import demo

if __name__ == "__main__":
    sys.exit(demo.main(prog="transfer_demo"))
