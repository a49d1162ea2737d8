"""Flags and steps shared by the example scripts."""

from absl import flags

import bit_keras

TINY = bit_keras.get_variant("R1-1-1-1x1")


def define_model_flags(default_variant="BiT-M-R50x1"):
    flags.DEFINE_string("variant", default_variant, "BiT variant, e.g. BiT-M-R50x1, or 'tiny' (units 1,1,1,1; for demos).")
    flags.DEFINE_string("weights", "release", "'release' (the variant's released checkpoint), a file, or 'none'.")
    flags.DEFINE_integer("batch_size", 512, "Global batch size (the HyperRule's is 512; the LR scales with it).")
    flags.DEFINE_float("base_lr", 0.003, "Learning rate at batch 512 (the HyperRule's is 0.003).")
    flags.DEFINE_integer("batch_split", 1, "Accumulate gradients over this many micro-batches.")
    flags.DEFINE_integer("steps", None, "Override the HyperRule's number of steps (quick runs only; 0: the rule's).")
    flags.DEFINE_list("sizes", None, "Override the HyperRule's resize,crop (quick runs only), e.g. 40,32; empty: the rule's.")
    flags.DEFINE_string("checkpoint_dir", None, "Back up here to resume after interruption; keeps best.keras.")
    flags.DEFINE_string("save", None, "Write the fine-tuned model here: .keras, or .npz for the official layout.")
    flags.DEFINE_integer("seed", 0, "Random seed.")


def make_tuner(num_classes):
    values = flags.FLAGS
    variant = TINY if values.variant == "tiny" else values.variant
    weights = None if values.weights == "none" or variant is TINY else values.weights
    return bit_keras.BiTFineTuner(
        variant,
        weights=weights,
        num_classes=num_classes,
        batch_size=values.batch_size,
        base_lr=values.base_lr,
        batch_split=values.batch_split,
        steps=values.steps or None,
        sizes=tuple(int(s) for s in values.sizes) if values.sizes else None,
        checkpoint_dir=values.checkpoint_dir,
        seed=values.seed,
    )


def save(model):
    path = flags.FLAGS.save
    if not path:
        return
    if path.endswith(".npz"):
        bit_keras.save_official(model, path)
    else:
        model.save(path)
    print(f"[save] wrote {path}")
