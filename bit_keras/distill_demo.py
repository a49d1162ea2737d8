"""The distillation demo: a wide teacher, a narrow student distilled from it, and the same student taught by labels.

On scikit-learn's embedded digits (all ten, no download), in minutes on a CPU:

1. teacher: a BiT twice as wide as the student (R1-1-1-1x2), trained on the
   digits with `BiTFineTuner`;
2. distilled: the student (R1-1-1-1x1, random weights) trained by
   `BiTDistiller` with the paper's recipe: function matching, consistent
   views, mixup with lambda ~ Beta(1, 1);
3. labels only: the same student, the same pipeline, updates, batch and
   learning rate, but the loss is the labels' cross-entropy
   (`loss="hinton", alpha=0`), so the teacher only watches.

For each seed it reports both students' test top-1 and their top-1
agreement with the teacher, then the means; `results.json` goes into
`--out`. Run it as `bit-keras demo --distill`.

Example (the recipe, without training):

>>> recipe = Recipe()
>>> recipe.teacher.name, recipe.student.name, recipe.steps
('R1-1-1-1x2', 'R1-1-1-1x1', 300)
"""

import dataclasses
import json
import os
import time

import numpy as np

import bit_keras
from bit_keras import checkpoints
from bit_keras.demo import digit_sources, prepare_out
from bit_keras.distill import BiTDistiller

ARMS = ("distilled", "labels")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Every number of the demo.

    The teacher trains as the transfer demo's fine-tuning does (batch 32, peak
    LR 0.008, resize 18 and random crops of 16, no flips: a mirrored digit is
    another digit or none). Both students then get the same budget: `steps`
    updates of batch 32 at 16 px, Inception crops of 50-100% of the area (the
    paper's 8% leaves too little of an 8x8 digit), no flips, mixup with lambda
    ~ Beta(1, 1), peak LR `student_lr` with the distiller's warm-up and cosine
    decay.
    """

    teacher: bit_keras.Variant = bit_keras.Variant((1, 1, 1, 1), width=2)
    student: bit_keras.Variant = bit_keras.Variant((1, 1, 1, 1), width=1)
    teacher_steps: int = 300
    steps: int = 300
    batch_size: int = 32
    teacher_lr: float = 0.008
    student_lr: float = 0.01
    image_size: int = 16
    crop_area: tuple = (0.5, 1.0)
    seeds: int = 3


def train_teacher(train, recipe):
    """The teacher, trained on `train` from random weights."""
    model = bit_keras.BiT(recipe.teacher, num_classes=train.num_classes)
    tuner = bit_keras.BiTFineTuner(
        model,
        batch_size=recipe.batch_size,
        base_lr=recipe.teacher_lr,
        steps=recipe.teacher_steps,
        sizes=(recipe.image_size + 2, recipe.image_size),
        flip=False,
        seed=0,
        jit_compile=False,
    )
    tuner.fit(train, verbose=0)
    return tuner.model


def student_run(teacher, train, test, recipe, arm, seed):
    """Trains one student (`arm` "distilled" or "labels") and returns its test top-1 and agreement with the teacher."""
    loss = {"distilled": {"loss": "function_matching"}, "labels": {"loss": "hinton", "alpha": 0.0}}[arm]
    distiller = BiTDistiller(
        teacher,
        recipe.student,
        student_weights=None,
        batch_size=recipe.batch_size,
        steps=recipe.steps,
        base_lr=recipe.student_lr,
        image_size=recipe.image_size,
        crop_area=recipe.crop_area,
        flip=False,
        seed=seed,
        jit_compile=False,
        **loss,
    )
    distiller.fit(train, verbose=0)
    results = distiller.evaluate(test, verbose=0)
    return {"accuracy": results["accuracy"], "agreement": results["agreement"], "teacher": results["teacher_accuracy"]}


def table(runs):
    """One line per arm: mean ± std of top-1 and agreement over the seeds."""
    lines = [f"{'student':<14} {'top-1':<14} {'agreement':<14}"]
    for arm in ARMS:
        accuracy = [run[arm]["accuracy"] for run in runs]
        agreement = [run[arm]["agreement"] for run in runs]
        lines.append(
            f"{arm:<14} {np.mean(accuracy):.3f} ± {np.std(accuracy):.3f}  {np.mean(agreement):.3f} ± {np.std(agreement):.3f}"
        )
    return "\n".join(lines)


def run(args):
    """Runs the demo from parsed `demo.add_arguments` flags (`--out`, `--seeds`, `--distill_steps`)."""
    start = time.time()
    steps = {"steps": args.distill_steps, "teacher_steps": args.distill_steps} if args.distill_steps else {}
    recipe = Recipe(seeds=args.seeds, **steps)
    prepare_out(args.out)
    train, test = digit_sources()
    print(f"[data] scikit-learn digits: {train.num_examples} training and {test.num_examples} test images of 0-9")
    print(f"[1/2] training the teacher {recipe.teacher.name} ({recipe.teacher_steps} steps)")
    teacher = train_teacher(train, recipe)
    runs = []
    for seed in range(recipe.seeds):
        print(f"[2/2] seed {seed}: the student {recipe.student.name} distilled, and taught by labels ({recipe.steps} steps each)")
        runs.append({arm: student_run(teacher, train, test, recipe, arm, seed) for arm in ARMS})
    teacher_accuracy = runs[0]["distilled"]["teacher"]
    path = os.path.join(args.out, "distill_results.json")
    with checkpoints.atomic_file(path, overwrite=True) as tmp, open(tmp, "w") as file:
        json.dump({"teacher_accuracy": teacher_accuracy, "runs": runs}, file, indent=2)
    print()
    print(f"teacher {recipe.teacher.name}: top-1 {teacher_accuracy:.3f}")
    print(table(runs))
    gain = np.mean([run["distilled"]["accuracy"] - run["labels"]["accuracy"] for run in runs])
    print(f"\nDistillation {'gains' if gain > 0 else 'loses'} {abs(gain):.3f} top-1 over labels alone at the same budget.")
    print(f"Results: {path}. Done in {time.time() - start:.0f} s.")
    return 0
