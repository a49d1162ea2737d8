"""Training and inference step speed of a BiT against timm and Keras, in one run.

One training step is forward, soft-label cross-entropy, backward and an SGD
(momentum 0.9) update; one inference step is a forward pass. Contenders:

    bit_keras/tf          TensorFlow backend, `model.compile()` defaults (the user path)
    bit_keras/tf-xla      TensorFlow backend, `compile(jit_compile=True)`
    bit_keras/tf-noxla    TensorFlow backend, `compile(jit_compile=False)` (only when named in
                          --contenders: on CPU it is the default, Keras' "auto" turning XLA off)
    bit_keras/tf-unfused  the default, traced under `bit_keras.layers.unfused()`: GroupNorm as
                          plain TensorFlow ops rather than one XLA cluster per layer (only when
                          named in --contenders)
    bit_keras/tf-floor    not a model: the default with weight standardisation skipped and GroupNorm
                          cut to its per-channel scale and shift (no statistics), so that the step
                          is TensorFlow's convolutions and little else; the floor a BiT on
                          TensorFlow cannot go below (only when named in --contenders)
    bit_keras/tf-gn-onepass  the default with GroupNorm's variance taken in one pass, E[x^2] - E[x]^2,
                          instead of the centred two passes (only when named in --contenders): what
                          the accurate variance costs
    bit_keras/tf-gn-grouped  the default with GroupNorm's statistics reduced over the pixels and a
                          group's channels at once, as before the per-channel-first reduction
                          (only when named in --contenders): what that order costs
    bit_keras/tf-gn-autodiff  the default with GroupNorm's gradient by automatic differentiation,
                          as before its closed form (only when named in --contenders): what the
                          closed form saves; `bit_keras/jax-gn-autodiff` the same under JAX
    bit_keras/tf-interop1  the default with one TensorFlow inter-op thread (`TF_NUM_INTEROP_THREADS`)
                          instead of one per core (only when named in --contenders): no slow spells,
                          slower training (docs/performance.md)
    bit_keras/tf-conv-only  the default with every convolution through the backend's convolution,
                          as before 1x1 stride-1 and one-output-pixel convolutions became matrix
                          products (only when named in --contenders): what those products save
    bit_keras/tf-ws-ops   the default with weight standardisation as separate reductions and
                          element-wise ops, as under `bit_keras.layers.portable()`, rather than one
                          fused batch norm (only when named in --contenders): what the fused op saves
    bit_keras/tf-relu-layers  the default with each ReLU a layer of its own after its GroupNorm, as
                          before the ReLU became GroupNorm's activation inside its XLA cluster (only
                          when named in --contenders): what that fusion saves
    bit_keras/tf-gn-reductions  the default with GroupNorm's means over the pixels as reductions
                          under mixed precision too, as before they became matrix products there
                          (only when named in --contenders; float32 is unchanged): what they save
    bit_keras/tf-folded   inference only, what `BiTFineTuner.predict` and `evaluate` run:
                          `bit_keras.fold(model)` (weight standardisation computed once, into plain
                          convolutions), compiled with `jit_compile=False` (GroupNorm's shared
                          clusters); the time it takes to fold is in its description
    bit_keras/tf-folded-xla  the same, compiled with `jit_compile=True` (one XLA program for the
                          whole model, which TensorFlow keeps for the life of the process), only
                          when named in --contenders
    bit_keras/jax         JAX backend, `train_on_batch` / `predict_on_batch` (the
                          step `model.fit` runs) on device-resident batches
    bit_keras/jax-stateless  JAX backend, a jitted `stateless_call` +
                          `optimizer.stateless_apply` step written in this file
                          (the library itself offers no stateless step)
    bit_keras/jax-floor   the floor of `bit_keras/tf-floor` under JAX: what XLA's own convolutions
                          allow (only when named in --contenders)
    timm/eager            timm resnetv2_50x1_bit (or the same layout for --variant),
                          eager PyTorch, channels-last
    timm/compile          the same under `torch.compile`
    keras/resnet50v2      `keras.applications.ResNet50V2` (BatchNorm), TensorFlow backend

Every contender runs in its own process. The processes start one after the
other and warm up (tracing, compilation) before any timing; then the
coordinator asks them in turn for a timed measurement, rotating the order
every repeat, so that noise on a shared machine spreads over all contenders.
The figure kept is the median over repeats. Peak memory is the process's peak
RSS on CPU and the device's peak allocation on GPU. A peer that is not
installed is reported absent.

Settings (same global batch, resolution and precision for every contender):
    cpu    batch 8 at 128 px, float32 (`--precision bf16`: Keras
           `mixed_bfloat16` against timm under bf16 autocast)
    gpu-a  batch 128 at 128 px, bf16
    gpu-b  batch 32 at 480 px, bf16

    python benchmarks/bench_step.py                       # cpu, float32
    python benchmarks/bench_step.py --precision bf16
    python benchmarks/bench_step.py --setting gpu-a
    python benchmarks/bench_step.py --repeats 1 --variant R1-1-1-1x1 --image_size 32 --batch_size 2 --steps 1  # smoke

Prints a table, then one JSON line per measurement (`"kind": "measurement"`),
per median (`"kind": "median"`) and per absent contender (`"kind": "absent"`).
On the CPU in float32 it also prints the ceiling (`"kind": "ceiling"`): the
speeds a 4096x4096 float32 GEMM's rate on this machine would allow for the
model's convolution and dense FLOPs, measured in the same run.
"""

import argparse
import contextlib
import os
import statistics
import sys
import time

import harness

SETTINGS = {
    "cpu": dict(batch_size=8, image_size=128, precision="float32"),
    "gpu-a": dict(batch_size=128, image_size=128, precision="bf16"),
    "gpu-b": dict(batch_size=32, image_size=480, precision="bf16"),
}
# name: (family, Keras backend or None, options)
CONTENDERS = {
    "bit_keras/tf": ("bit_keras", "tensorflow", {}),
    "bit_keras/tf-xla": ("bit_keras", "tensorflow", {"jit_compile": True}),
    "bit_keras/tf-noxla": ("bit_keras", "tensorflow", {"jit_compile": False}),
    "bit_keras/tf-unfused": ("bit_keras", "tensorflow", {"unfused": True}),
    "bit_keras/tf-floor": ("bit_keras", "tensorflow", {"floor": True}),
    "bit_keras/tf-gn-onepass": ("bit_keras", "tensorflow", {"group_norm": "one_pass"}),
    "bit_keras/tf-gn-grouped": ("bit_keras", "tensorflow", {"group_norm": "grouped"}),
    "bit_keras/tf-gn-autodiff": ("bit_keras", "tensorflow", {"group_norm": "autodiff"}),
    "bit_keras/tf-interop1": ("bit_keras", "tensorflow", {"inter_op_threads": 1}),
    "bit_keras/tf-conv-only": ("bit_keras", "tensorflow", {"conv_only": True}),
    "bit_keras/tf-ws-ops": ("bit_keras", "tensorflow", {"ws_ops": True}),
    "bit_keras/tf-relu-layers": ("bit_keras", "tensorflow", {"relu_layers": True}),
    "bit_keras/tf-gn-reductions": ("bit_keras", "tensorflow", {"gn_reductions": True}),
    "bit_keras/tf-folded": ("bit_keras", "tensorflow", {"folded": True, "jit_compile": False}),
    "bit_keras/tf-folded-xla": ("bit_keras", "tensorflow", {"folded": True, "jit_compile": True}),
    "bit_keras/jax": ("bit_keras", "jax", {}),
    "bit_keras/jax-stateless": ("bit_keras", "jax", {"stateless": True}),
    "bit_keras/jax-floor": ("bit_keras", "jax", {"floor": True}),
    "bit_keras/jax-gn-autodiff": ("bit_keras", "jax", {"group_norm": "autodiff"}),
    "timm/eager": ("timm", None, {}),
    "timm/compile": ("timm", None, {"compile": True}),
    "keras/resnet50v2": ("keras_resnet50v2", "tensorflow", {}),
}
DIAGNOSTIC_CONTENDERS = (
    "bit_keras/tf-noxla",
    "bit_keras/tf-unfused",
    "bit_keras/tf-floor",
    "bit_keras/tf-gn-onepass",
    "bit_keras/tf-gn-grouped",
    "bit_keras/tf-gn-autodiff",
    "bit_keras/tf-interop1",
    "bit_keras/tf-conv-only",
    "bit_keras/tf-ws-ops",
    "bit_keras/tf-relu-layers",
    "bit_keras/tf-gn-reductions",
    "bit_keras/tf-folded-xla",
    "bit_keras/jax-floor",
    "bit_keras/jax-gn-autodiff",
)
DEFAULT_CONTENDERS = [name for name in CONTENDERS if name not in DIAGNOSTIC_CONTENDERS]
PEERS = ("timm/eager", "timm/compile", "keras/resnet50v2")
INFERENCE_ONLY = ("bit_keras/tf-folded", "bit_keras/tf-folded-xla")  # no training step: a folded model is not a BiT to train
MODES = ("infer", "train")
LEARNING_RATE = 1e-3
GEMM_SIZE = 4096
_WORKER_CONTEXTS = contextlib.ExitStack()  # contexts a worker keeps open until it exits


# ----------------------------------------------------------------- worker side


def _peak_memory_mb(device_peak):
    if device_peak is not None:
        peak = device_peak()
        if peak is not None:
            return peak / 2**20, "device"
    return harness.peak_rss_mb(), "rss"


def _labels(rng, batch_size, num_classes):
    """Soft labels (mixup-like), float32, rows summing to 1."""
    import numpy as np

    hard = np.eye(num_classes, dtype="float32")[rng.integers(0, num_classes, batch_size)]
    return (0.7 * hard + 0.3 * hard[::-1]).astype("float32")


def _keras_steps(args, family, options):
    if options.get("inter_op_threads"):  # before TensorFlow starts
        os.environ["TF_NUM_INTEROP_THREADS"] = str(options["inter_op_threads"])
    if family == "bit_keras":
        import bit_keras  # first, as a user imports it: it sets TensorFlow's start-up options

        if options.get("unfused"):
            _WORKER_CONTEXTS.enter_context(bit_keras.layers.unfused())  # every trace of the worker's life is plain
        if options.get("floor"):
            _skip_normalization(bit_keras)
        if options.get("group_norm"):
            # Before the first trace: each layer's shared function binds it then.
            bit_keras.layers._group_norm = GROUP_NORMS[options["group_norm"]][0]
        if options.get("conv_only"):
            import keras

            bit_keras.StandardizedConv2D.convolution_op = keras.layers.Conv2D.convolution_op
        if options.get("ws_ops"):
            bit_keras.layers._batch_norm_standardizes = lambda: False
        if options.get("gn_reductions"):
            bit_keras.layers._products_average = lambda inputs: False
        if options.get("relu_layers"):
            _relu_layers(bit_keras)

    import keras
    import numpy as np

    if args.precision == "bf16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    shape = (args.image_size, args.image_size, 3)
    if family == "bit_keras":
        model = bit_keras.BiT(args.variant, num_classes=args.num_classes, input_shape=shape)
    else:
        model = keras.applications.ResNet50V2(
            weights=None, input_shape=shape, classes=args.num_classes, classifier_activation=None
        )
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (args.batch_size, *shape)).astype("float32")
    y = _labels(rng, args.batch_size, args.num_classes)
    optimizer = keras.optimizers.SGD(LEARNING_RATE, momentum=0.9)
    loss = keras.losses.CategoricalCrossentropy(from_logits=True)
    backend = keras.backend.backend()
    device_peak = None
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        x, y = jax.device_put(x, device), jax.device_put(y, device)
        if device.platform != "cpu":
            device_peak = lambda: (device.memory_stats() or {}).get("peak_bytes_in_use")
        description = f"jax {jax.__version__} on {device.device_kind}"
        if options.get("floor"):
            description += ", the floor: no weight standardisation, GroupNorm without statistics"
        elif options.get("group_norm"):
            description += f", GroupNorm {GROUP_NORMS[options['group_norm']][1]}"
    else:
        import tensorflow as tf

        x, y = tf.constant(x), tf.constant(y)
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            device_peak = lambda: tf.config.experimental.get_memory_info("GPU:0")["peak"]
        from bit_keras import _startup

        onednn = "on" if _startup.onednn_enabled() else "off"
        description = f"tensorflow {tf.__version__} on {'GPU' if gpus else 'CPU'}, oneDNN {onednn}"
        if family == "bit_keras":
            if options.get("floor"):
                description += ", the floor: no weight standardisation, GroupNorm without statistics"
            elif options.get("group_norm"):
                description += f", GroupNorm fused by XLA {GROUP_NORMS[options['group_norm']][1]}"
            elif options.get("conv_only"):
                description += ", every convolution a convolution (none as a matrix product)"
            elif options.get("ws_ops"):
                description += ", weight standardisation as separate ops (no fused batch norm)"
            elif options.get("relu_layers"):
                description += ", each ReLU a layer after its GroupNorm"
            elif options.get("inter_op_threads"):
                description += f", {options['inter_op_threads']} inter-op thread(s)"
            elif options.get("gn_reductions"):
                description += ", GroupNorm's means reductions under mixed precision too (no products)"
            else:
                description += f", GroupNorm {'as plain ops' if options.get('unfused') else 'fused by XLA'}"

    forward_gflop = _forward_gflop(model)
    if options.get("stateless"):
        return (*_jax_stateless_steps(model, optimizer, loss, x, y), device_peak, description, forward_gflop)
    jit_option = {k: v for k, v in options.items() if k == "jit_compile"}
    model.compile(optimizer=optimizer, loss=loss, **jit_option)
    jit = model.jit_compile
    description += f", keras {keras.__version__}, jit_compile={jit}"
    if options.get("folded"):
        started = time.perf_counter()
        folded = bit_keras.fold(model)
        description += f", folded in {time.perf_counter() - started:.2f} s"
        folded.compile(loss=loss, **jit_option)
        return lambda: folded.predict_on_batch(x), None, device_peak, description, forward_gflop

    def infer():
        return model.predict_on_batch(x)

    def train():
        return model.train_on_batch(x, y)

    return infer, train, device_peak, description, forward_gflop


def _one_pass_group_norm(x, gamma, beta, groups, epsilon, channels, pixel_mean):
    """GroupNorm with E[x^2] - E[x]^2 as its variance: one pass over the activations, fewer digits (its means are plain reductions)."""
    from keras import ops

    from bit_keras.layers import _group_mean

    x = ops.cast(x, "float32")
    shape = ops.shape(x)
    pixels = ops.reshape(x, (shape[0], -1, channels))
    mean = _group_mean(ops.mean(pixels, axis=1), groups)
    variance = ops.maximum(_group_mean(ops.mean(ops.square(pixels), axis=1), groups) - ops.square(mean), 0.0)
    scale = ops.reshape(gamma, (1, 1, channels)) * ops.rsqrt(variance + epsilon)
    return ops.reshape(pixels * scale + ops.reshape(beta, (1, 1, channels)) - mean * scale, shape)


def _grouped_group_norm(x, gamma, beta, groups, epsilon, channels, pixel_mean):
    """GroupNorm with each statistic reduced over the pixels and a group's channels in one reduction (never a product)."""
    from keras import ops

    x = ops.cast(x, "float32")
    shape, per_group = ops.shape(x), channels // groups
    grouped = ops.reshape(x, (shape[0], -1, groups, per_group))
    centered = grouped - ops.mean(grouped, axis=(1, 3), keepdims=True)
    variance = ops.mean(ops.square(centered), axis=(1, 3), keepdims=True)
    scale = ops.reshape(gamma, (1, 1, groups, per_group)) * ops.rsqrt(variance + epsilon)
    return ops.reshape(centered * scale + ops.reshape(beta, (1, 1, groups, per_group)), shape)


def _autodiff_group_norm(x, gamma, beta, **static):
    """bit_keras' GroupNorm, differentiated by the framework rather than by its closed-form gradient."""
    from bit_keras.layers import _normalized

    return _normalized(x, gamma, beta, **static)[0]


# The diagnostic GroupNorms: option -> (function, description)
GROUP_NORMS = {
    "autodiff": (_autodiff_group_norm, "with its gradient by automatic differentiation"),
    "one_pass": (_one_pass_group_norm, "with a one-pass variance"),
    "grouped": (_grouped_group_norm, "reducing over pixels and a group's channels at once"),
}


def _skip_normalization(bit_keras):
    """In this worker only: convolutions use the raw kernel, and GroupNorm is `x * gamma + beta`."""
    from keras import ops

    def affine(layer, inputs):
        dtype = inputs.dtype
        return inputs * ops.cast(layer.gamma, dtype) + ops.cast(layer.beta, dtype)

    bit_keras.StandardizedConv2D.standardized_kernel = lambda layer: ops.cast(layer.kernel, "float32")
    bit_keras.GroupNormalization.call = affine


def _relu_layers(bit_keras):
    """In this worker only: the builder puts each ReLU in a layer of its own after its GroupNorm."""
    import keras

    def gn_then_relu(x, name):
        x = bit_keras.GroupNormalization(groups=32, epsilon=1e-5, name=f"{name}_gn")(x)
        return keras.layers.Activation("relu", name=f"{name}_relu")(x)

    bit_keras.resnet._gn_relu = gn_then_relu


def _forward_gflop(model):
    """Multiply-adds x 2 of the convolutions and dense layers for one image (GN, WS and ReLU not counted)."""
    import keras
    import numpy as np

    flops = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            height, width = layer.output.shape[1:3]
            flops += 2 * height * width * int(np.prod(layer.kernel.shape))
        elif isinstance(layer, keras.layers.Dense):
            flops += 2 * int(np.prod(layer.kernel.shape))
    return flops / 1e9


def _jax_stateless_steps(model, optimizer, loss, x, y):
    import jax

    optimizer.build(model.trainable_variables)
    state = {
        "trainable": [v.value for v in model.trainable_variables],
        "non_trainable": [v.value for v in model.non_trainable_variables],
        "optimizer": [v.value for v in optimizer.variables],
    }

    def loss_fn(trainable, non_trainable, images, labels):
        logits, non_trainable = model.stateless_call(trainable, non_trainable, images, training=True)
        return loss(labels, logits), non_trainable

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    @jax.jit
    def train_step(trainable, non_trainable, optimizer_variables, images, labels):
        (value, non_trainable), grads = grad_fn(trainable, non_trainable, images, labels)
        trainable, optimizer_variables = optimizer.stateless_apply(optimizer_variables, grads, trainable)
        return trainable, non_trainable, optimizer_variables, value

    @jax.jit
    def infer_step(trainable, non_trainable, images):
        return model.stateless_call(trainable, non_trainable, images, training=False)[0]

    def infer():
        return infer_step(state["trainable"], state["non_trainable"], x).block_until_ready()

    def train():
        trainable, non_trainable, optimizer_variables, value = train_step(
            state["trainable"], state["non_trainable"], state["optimizer"], x, y
        )
        state.update(trainable=trainable, non_trainable=non_trainable, optimizer=optimizer_variables)
        return value.block_until_ready()

    return infer, train


def _import_timm():
    import torch

    try:
        import timm
    except RuntimeError as error:
        # A torchvision wheel built for CUDA torch next to a CPU-only torch
        # fails to register its ops; timm needs none of them for ResNetV2.
        if "torchvision::nms" not in str(error):
            raise
        for name in [m for m in sys.modules if m.startswith(("torchvision", "timm"))]:
            del sys.modules[name]
        library = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import timm
    return torch, timm


def _timm_model(timm, variant, num_classes):
    """timm's BiT ResNetV2 with the layout of a bit_keras variant (R50x1: resnetv2_50x1_bit)."""
    import functools

    from timm.layers import StdConv2d
    from timm.models.resnetv2 import ResNetV2

    import bit_keras.resnet as resnet

    spec = resnet.get_variant(variant)
    return ResNetV2(
        layers=list(spec.units),
        width_factor=spec.width,
        num_classes=num_classes,
        stem_type="fixed",
        conv_layer=functools.partial(StdConv2d, eps=1e-8),
    )


def _timm_steps(args, options):
    torch, timm = _import_timm()
    device = "cuda" if args.setting.startswith("gpu") and torch.cuda.is_available() else "cpu"
    model = _timm_model(timm, args.variant, args.num_classes).to(device, memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch_size, 3, args.image_size, args.image_size, generator=generator) * 2 - 1
    x = x.to(device, memory_format=torch.channels_last)
    import numpy as np

    y = torch.from_numpy(_labels(np.random.default_rng(0), args.batch_size, args.num_classes)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=0.9)
    forward = torch.compile(model) if options.get("compile") else model
    if args.precision == "bf16":
        autocast = lambda: torch.autocast(device, dtype=torch.bfloat16)
    else:
        import contextlib

        autocast = contextlib.nullcontext
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def infer():
        with torch.no_grad(), autocast():
            logits = forward(x)
        synchronize()
        return logits

    def train():
        with autocast():
            logits = forward(x)
        loss = torch.sum(-y * torch.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize()
        return loss

    device_peak = torch.cuda.max_memory_allocated if device == "cuda" else None
    description = f"torch {torch.__version__}, timm {timm.__version__} on {device}, threads {torch.get_num_threads()}"
    if options.get("compile"):
        description += ", torch.compile"
    return infer, train, device_peak, description, None


def _timed(step, steps, min_seconds):
    count, start = 0, time.perf_counter()
    while True:
        step()
        count += 1
        elapsed = time.perf_counter() - start
        if (steps and count >= steps) or (not steps and count >= 2 and elapsed >= min_seconds):
            return elapsed / count, count


def worker(args):
    family, _, options = CONTENDERS[args.worker]
    started = time.perf_counter()
    try:
        if family == "timm":
            infer, train, device_peak, description, forward_gflop = _timm_steps(args, options)
        else:
            infer, train, device_peak, description, forward_gflop = _keras_steps(args, family, options)
    except ImportError as error:
        harness.say(status="absent", reason=f"{type(error).__name__}: {error}")
        return
    built = time.perf_counter()
    for _ in range(args.warmup):
        for step in (infer, train):
            if step is not None:  # None: the contender has no such step (`INFERENCE_ONLY`)
                step()
    harness.say(
        status="ready",
        description=description,
        forward_gflop=forward_gflop,
        setup_s=round(built - started, 2),
        warmup_s=round(time.perf_counter() - built, 2),
    )
    steps = {"infer": infer, "train": train}
    for command in harness.commands():
        seconds, count = _timed(steps[command], args.steps, args.min_seconds)
        memory, memory_kind = _peak_memory_mb(device_peak)
        harness.say(status="measured", seconds_per_step=seconds, steps=count, peak_memory_mb=memory, memory_kind=memory_kind)


# ------------------------------------------------------------ coordinator side


def _median_rows(results):
    rows = {}
    for name, modes in results.items():
        row = {}
        for mode, runs in modes.items():
            if runs:
                seconds = statistics.median(r["seconds_per_step"] for r in runs)
                row[mode] = seconds
        row["memory"] = max((r["peak_memory_mb"] for runs in modes.values() for r in runs), default=None)
        row["memory_kind"] = next((r["memory_kind"] for runs in modes.values() for r in runs), "")
        rows[name] = row
    return rows


def coordinate(args, passthrough):
    names = args.contenders.split(",") if args.contenders else DEFAULT_CONTENDERS
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown:
        sys.exit(f"Unknown contenders {unknown}; choose from {', '.join(CONTENDERS)}.")
    header = dict(
        setting=args.setting,
        precision=args.precision,
        variant=args.variant,
        batch_size=args.batch_size,
        image_size=args.image_size,
    )
    print(
        f"bench_step: {args.variant}, {args.setting} setting, batch {args.batch_size} at {args.image_size} px, "
        f"{args.precision}, {args.repeats} repeats, python {sys.version.split()[0]}",
        flush=True,
    )
    workers, absent, descriptions = {}, {}, {}
    forward_gflop = None
    for name in names:  # warm up one at a time: no contender's compile slows another's
        worker_ = harness.Contender(__file__, name, passthrough, backend=CONTENDERS[name][1])
        message = worker_.receive(args.warmup_timeout)
        if message["status"] == "ready":
            workers[name] = worker_
            descriptions[name] = message["description"]
            forward_gflop = forward_gflop or message.get("forward_gflop")
            print(
                f"  ready  {name:<24} {message['description']} (setup {message['setup_s']}s, warm-up {message['warmup_s']}s)",
                flush=True,
            )
        else:
            worker_.stop()
            absent[name] = message["reason"]
            print(f"  {message['status']:<6} {name:<24} {message['reason']}", flush=True)
    results = {name: {mode: [] for mode in MODES} for name in workers}
    json_lines = []
    for repeat in range(args.repeats):
        order = harness.rotated(workers, repeat)
        for mode in MODES:
            for name in order:
                if mode == "train" and name in INFERENCE_ONLY:
                    continue
                message = workers[name].ask(mode, args.step_timeout)
                if message["status"] != "measured":
                    absent[name] = message["reason"]
                    del workers[name]
                    results.pop(name, None)
                    print(f"  failed {name}: {message['reason']}", flush=True)
                    continue
                results[name][mode].append(message)
                seconds = message["seconds_per_step"]
                json_lines.append(
                    dict(
                        kind="measurement",
                        contender=name,
                        mode=mode,
                        repeat=repeat,
                        **header,
                        ms_per_step=round(seconds * 1e3, 3),
                        images_per_s=round(args.batch_size / seconds, 3),
                        steps=message["steps"],
                        peak_memory_mb=round(message["peak_memory_mb"], 1),
                        memory_kind=message["memory_kind"],
                    )
                )
            order = order[::-1]  # the other mode runs in the opposite order
    for worker_ in workers.values():
        worker_.stop()

    rows = _median_rows(results)
    speed = lambda name, mode: args.batch_size / rows[name][mode] if name in rows and mode in rows[name] else None
    best_peer = {}
    for mode in MODES:
        peers = [(speed(p, mode), p) for p in PEERS if speed(p, mode)]
        best_peer[mode] = max(peers) if peers else (None, None)
    print()
    print(
        f"{'contender':<24} {'infer img/s':>11} {'ms/step':>8} {'train img/s':>11} {'ms/step':>8} {'peak MB':>8}  "
        f"{'vs best peer':>14} {'vs timm eager':>14} {'vs timm comp.':>14}"
    )
    for name in names:
        if name not in rows:
            print(f"{name:<24} absent: {absent.get(name, '').splitlines()[0] if absent.get(name) else ''}")
            json_lines.append(dict(kind="absent", contender=name, reason=absent.get(name, ""), **header))
            continue
        cells, ratios = [], {}
        for mode in MODES:
            value = speed(name, mode)
            cells.append(f"{value:>11.2f} {rows[name][mode] * 1e3:>8.1f}" if value else f"{'-':>11} {'-':>8}")
            for peer_key, peer_name in (
                ("best_peer", best_peer[mode][1]),
                ("timm_eager", "timm/eager"),
                ("timm_compile", "timm/compile"),
            ):
                peer = speed(peer_name, mode) if peer_name else None
                ratios[(peer_key, mode)] = value / peer if value and peer and name.startswith("bit_keras") else None
        fmt = lambda key, ratios=ratios: "/".join(f"{ratios[(key, m)]:.2f}x" if ratios[(key, m)] else "-" for m in MODES)
        memory = f"{rows[name]['memory']:>8.0f}" if rows[name]["memory"] else f"{'-':>8}"
        print(
            f"{name:<24} {cells[0]} {cells[1]} {memory}  {fmt('best_peer'):>14} {fmt('timm_eager'):>14} {fmt('timm_compile'):>14}"
        )
        for mode in MODES:
            if mode in rows[name]:
                seconds = rows[name][mode]
                json_lines.append(
                    dict(
                        kind="median",
                        contender=name,
                        mode=mode,
                        **header,
                        repeats=len(results[name][mode]),
                        ms_per_step=round(seconds * 1e3, 3),
                        images_per_s=round(args.batch_size / seconds, 3),
                        peak_memory_mb=round(rows[name]["memory"], 1),
                        memory_kind=rows[name]["memory_kind"],
                        ratio_to_best_peer=_round(ratios[("best_peer", mode)]),
                        best_peer=best_peer[mode][1],
                        ratio_to_timm_eager=_round(ratios[("timm_eager", mode)]),
                        ratio_to_timm_compile=_round(ratios[("timm_compile", mode)]),
                        description=descriptions.get(name, ""),
                    )
                )
    print(
        "(ratios: infer/train images per second of a bit_keras path over the peer's; peak MB: "
        f"{'device peak' if any(r['memory_kind'] == 'device' for r in rows.values()) else 'process peak RSS'})"
    )
    if args.setting == "cpu" and args.precision == "float32" and forward_gflop:
        ceiling = _ceiling(forward_gflop)
        print(
            f"ceiling: a {GEMM_SIZE}x{GEMM_SIZE} float32 GEMM runs at {ceiling['gemm_gflop_per_s']:.0f} GFLOP/s here "
            f"(numpy, all cores); at that rate the model's {forward_gflop:.2f} GFLOP per image (convolutions and "
            f"the head; backward counted as 2x forward) allow at most {ceiling['infer_images_per_s']:.1f} img/s "
            f"inference and {ceiling['train_images_per_s']:.1f} img/s training"
        )
        json_lines.append(dict(kind="ceiling", **header, forward_gflop=round(forward_gflop, 4), **ceiling))
    harness.print_json_lines(json_lines)
    return 0 if rows else 1


def _ceiling(forward_gflop):
    """The step speeds this CPU's float32 GEMM rate would allow, measured while every worker idles."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((GEMM_SIZE, GEMM_SIZE), dtype="float32")
    a @ a
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    gflop_per_s = 2 * GEMM_SIZE**3 / best / 1e9
    return dict(
        gemm_gflop_per_s=round(gflop_per_s, 1),
        infer_images_per_s=round(gflop_per_s / forward_gflop, 2),
        train_images_per_s=round(gflop_per_s / (3 * forward_gflop), 2),
    )


def _round(value):
    return None if value is None else round(value, 3)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=SETTINGS, default="cpu")
    parser.add_argument("--precision", choices=("float32", "bf16"), default=None, help="the setting's by default")
    parser.add_argument("--variant", default="BiT-M-R50x1", help="any bit_keras variant name, e.g. R1-1-1-1x1")
    parser.add_argument("--batch_size", type=int, default=None, help="the setting's by default")
    parser.add_argument("--image_size", type=int, default=None, help="the setting's by default")
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each kind before timing")
    parser.add_argument("--steps", type=int, default=0, help="steps per measurement; 0: as many as fit in --min_seconds")
    parser.add_argument("--min_seconds", type=float, default=3.0)
    parser.add_argument("--contenders", default="", help=f"comma-separated subset of: {', '.join(CONTENDERS)}")
    parser.add_argument("--warmup_timeout", type=float, default=1800)
    parser.add_argument("--step_timeout", type=float, default=600)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    setting = SETTINGS[args.setting]
    for key in ("batch_size", "image_size", "precision"):
        if getattr(args, key) is None:
            setattr(args, key, setting[key])
    if args.worker:
        return worker(args)
    return coordinate(args, harness.passthrough(args))


if __name__ == "__main__":
    sys.exit(main())
