"""`bit_keras.fold`: a copy of a BiT for inference, its weight standardisation computed once.

A `StandardizedConv2D` standardises its kernel on every call: for BiT-R50x1
that is 23.5M weights reduced, shifted and scaled before every forward pass.
While the weights cannot change, as during one `predict` or `evaluate`, the
standardised kernels can be computed once and held by plain convolutions.
Written in `keras` alone: it runs under every Keras backend.
"""

import keras

from bit_keras.layers import StandardizedConv2D


def fold(model, into=None):
    """A copy of `model` in which every `StandardizedConv2D` is a plain `keras.layers.Conv2D`.

    Each convolution of the copy holds its original's standardised kernel,
    computed in float32 with that layer's own epsilon exactly as the layer
    computes it on every call (`StandardizedConv2D.standardized_kernel`), and
    keeps its name, filters, kernel size, strides, padding, bias and dtype
    policy; under a mixed-precision policy it holds that kernel in the compute
    dtype (`bfloat16` or `float16`), cast once as the layer casts it on every call. Every other layer is copied with its configuration and weights
    (GroupNorm stays GroupNorm); models nested in `model` (a BiT inside a
    wrapper) are folded too. `model` itself is left as it was, and the copy
    shares no variable with it: it is a snapshot of the weights at the time
    of the call, for inference (`predict`, `evaluate`, export). Fold again
    after any weight update. The copy is not trainable (`trainable=False`):
    training it would train convolutions without weight standardisation.
    It has the `class_names` of `model` (see `bit_keras.labels`), and is not
    compiled.

    To fold again after an update, pass the earlier copy as `into`: its
    weights are overwritten from `model` as they are now and it is returned,
    so whatever Keras traced for it (its `predict` and `evaluate` steps) is
    kept instead of traced again for a new model.

    Args:
        model: a functional or `Sequential` `keras.Model` that contains
            `StandardizedConv2D` layers, e.g. a `bit_keras.BiT` or a model
            built around one.
        into: None for a new copy, or an earlier `fold(model)` to refresh in place.

    Returns:
        The folded `keras.Model`, of the same class, name and outputs.

    Example:

    >>> import numpy as np, bit_keras
    >>> model = bit_keras.BiT("R1-1-1-1x1", include_top=False, pooling="avg")
    >>> folded = bit_keras.fold(model)
    >>> type(folded.get_layer("root_conv")).__name__, type(model.get_layer("root_conv")).__name__
    ('Conv2D', 'StandardizedConv2D')
    >>> images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    >>> features, expected = folded.predict(images, verbose=0), model.predict(images, verbose=0)
    >>> bool(np.abs(features - expected).max() <= 1e-5 * np.abs(expected).max())
    True
    >>> kernel = model.get_layer("root_conv").kernel  # an update, then the copy refolded in place:
    >>> _ = kernel.assign(np.random.default_rng(1).normal(size=kernel.shape).astype("float32"))
    >>> bit_keras.fold(model, into=folded) is folded
    True
    >>> features, expected = folded.predict(images, verbose=0), model.predict(images, verbose=0)
    >>> bool(np.abs(features - expected).max() <= 1e-5 * np.abs(expected).max())
    True
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"fold(model): model must be a keras.Model containing StandardizedConv2D layers (e.g. a bit_keras.BiT), "
            f"got {type(model).__module__}.{type(model).__qualname__}."
        )
    config = _graph_config(model)
    if config is None:
        raise ValueError(
            f"fold(model): model must be a functional or Sequential keras.Model, whose layers it can rebuild; "
            f"{model.name!r} is a subclassed {type(model).__qualname__}. Fold the BiT inside it "
            f"(bit_keras.fold(bit)) and use the folded copy in its place."
        )
    layers = list(_walk(model))
    if not any(isinstance(layer, StandardizedConv2D) for layer in layers):
        raise ValueError(
            f"fold(model): model must contain StandardizedConv2D layers (a bit_keras.BiT, or a model built around "
            f"one); {model.name!r} has none, so there is nothing to fold."
        )
    if into is not None:
        _check_fold_of(model, into)
        folded = into
    else:
        _fold_config(model, config)
        # Layer classes of the model's own (a wrapper's, say) need not be registered with Keras.
        classes = {type(layer).__name__: type(layer) for layer in layers if not type(layer).__module__.startswith("keras.")}
        with keras.saving.custom_object_scope(classes):
            folded = type(model).from_config(config)
        # Fitting the copy would train plain convolutions where BiT standardises its kernels (a loss
        # of 3 rose to 95): it is for inference only.
        folded.trainable = False
    _copy_state(model, folded)
    folded.class_names = getattr(model, "class_names", None)
    return folded


def _graph_config(model):
    """The config of a functional or Sequential model (its layers and how they connect), or None."""
    try:
        config = model.get_config()
    except NotImplementedError:
        return None
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        return None
    return config


def _walk(model):
    """Every layer of `model`, and of the models nested in it."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model) and _graph_config(layer) is not None:
            yield from _walk(layer)


def _check_fold_of(model, into):
    """Refuses an `into` that is not a fold of `model`: its layers must be `model`'s, convolutions plain."""

    def layout(network, folded):
        return [
            (
                layer.name,
                "Conv2D" if folded and isinstance(layer, StandardizedConv2D) else type(layer).__name__,
                tuple(tuple(w.shape) for w in layer.weights),
            )
            for layer in _walk(network)
        ]

    if not isinstance(into, keras.Model) or layout(model, True) != layout(into, False):
        raise ValueError(
            f"fold(model, into=...): into must be a copy returned by fold(model) for this model {model.name!r} "
            f"(the same layers, with plain Conv2D convolutions); got {getattr(into, 'name', type(into).__qualname__)!r}. "
            f"Call fold(model) for a new copy."
        )


def _fold_config(model, config):
    """Rewrites, in `config`, each `StandardizedConv2D` of `model` (and of its nested models) as a `Conv2D`."""
    by_name = {layer.name: layer for layer in model.layers}
    for entry in config["layers"]:
        layer = by_name.get(entry["config"].get("name"))
        if isinstance(layer, StandardizedConv2D):
            settings = {key: value for key, value in entry["config"].items() if key != "epsilon"}
            if layer.dtype_policy.variable_dtype != layer.compute_dtype:
                # Under mixed precision the kernel is held in the compute dtype: the cast each call made, made once.
                settings["dtype"] = layer.compute_dtype
            plain = keras.saving.serialize_keras_object(keras.layers.Conv2D.from_config(settings))
            for key in ("module", "class_name", "registered_name", "config"):
                entry[key] = plain[key]
        elif isinstance(layer, keras.Model) and _graph_config(layer) is not None:
            _fold_config(layer, entry["config"])


def _copy_state(source, target):
    """Gives `target`, the folded copy, the dtype policy and weights of `source`: standardised kernels for the convolutions."""
    # A functional model's config holds no dtype policy: rebuilt, it would take the global one. Under a
    # mixed policy the model's own opens the autocast scope in which GroupNorm reads gamma and beta in float32.
    target.dtype_policy = source.dtype_policy
    for layer in source.layers:
        twin = target.get_layer(layer.name)
        if isinstance(layer, StandardizedConv2D):
            # Computed in float32 as `call` computes it, held in the variable's dtype (float32, but under a
            # pure half-precision policy); Conv2D casts it to the compute dtype, as `call` casts its kernel.
            twin.kernel.assign(keras.ops.cast(layer.standardized_kernel(), twin.kernel.dtype))
            if layer.use_bias:
                twin.bias.assign(layer.bias)
        elif isinstance(layer, keras.Model) and _graph_config(layer) is not None:
            _copy_state(layer, twin)
        elif layer.weights:
            twin.set_weights(layer.get_weights())
