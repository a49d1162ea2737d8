"""BiT's promise on scikit-learn's digits: pre-train upstream, export, few-shot transfer, compare.

    python -m examples.transfer_demo                 # from the repository root
    python examples/transfer_demo.py --out my_run    # from anywhere
    bit-keras demo                                   # the same, as the console command

Pre-trains a small BiT with `bit_keras.BiTPretrainer` on the digits 0-4,
exports it with `hub_export.export` and reads it back, fine-tunes it with
`bit_keras.BiTFineTuner` on the digits 5-9 from 1, 2, 5, 10 examples per class
and the full split (several seeds), trains the same model from scratch with
the same budget, and prints and plots the comparison. Under 5 minutes on 2 CPU
cores; `--seeds 1 --shots 1,full` is quicker. The code is `bit_keras/demo.py`
(`bit-keras demo` runs it too); `--help` lists the flags.
"""

import sys

from bit_keras import demo

if __name__ == "__main__":
    sys.exit(demo.main(prog="transfer_demo"))
