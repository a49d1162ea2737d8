"""The trainers' optimizer: SGD with momentum and weight decay, one update per global batch."""

import keras
from keras import ops

from bit_keras import arguments


@keras.saving.register_keras_serializable(package="bit_keras")
class AccumulatingSGD(keras.optimizers.Optimizer):
    """SGD with momentum and L2 weight decay, updating once per `accumulation_steps` micro-batches.

    Keras' own `gradient_accumulation_steps` applies the update inside a
    conditional, which tf.distribute refuses (the gradients' all-reduce would
    sit inside it). Here every micro-step runs the same unconditional
    arithmetic, masked to change the weights and the momentum only on the
    last micro-step of an update, so it runs on one device, on replicas and
    on JAX alike. The update is that of `keras.optimizers.SGD`
    (`m = momentum * m - lr * g; w = w + m`) with `g` the mean gradient of
    the micro-batches plus `weight_decay * w`. `iterations` and the learning
    rate schedule count optimizer updates, not micro-steps.

    Example:

    >>> import numpy as np
    >>> w = keras.Variable(np.ones(2, "float32"))
    >>> sgd = AccumulatingSGD(0.5, momentum=0.0, accumulation_steps=2)
    >>> sgd.apply([np.array([1.0, 3.0], "float32")], [w])
    >>> sgd.apply([np.array([3.0, 1.0], "float32")], [w])
    >>> keras.ops.convert_to_numpy(w), int(sgd.iterations)
    (array([0., 0.], dtype=float32), 1)
    """

    def __init__(self, learning_rate, momentum=0.9, weight_decay=0.0, accumulation_steps=1, name="accumulating_sgd", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = float(momentum)
        self.l2 = float(weight_decay)
        self.accumulation_steps = arguments.positive_int("accumulation_steps", accumulation_steps)

    @property
    def iterations(self):
        return keras.ops.floor_divide(self._iterations, self.accumulation_steps)

    def _get_current_learning_rate(self):
        if isinstance(self._learning_rate, keras.optimizers.schedules.LearningRateSchedule):
            return self._learning_rate(self.iterations)
        return super()._get_current_learning_rate()

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = [self.add_variable_from_reference(v, "momentum") for v in variables]
        # Without accumulation there is nothing to carry between steps: no copy of the weights to keep.
        multi_step = self.accumulation_steps > 1
        self.accumulators = [self.add_variable_from_reference(v, "accumulator") for v in variables] if multi_step else []

    def _all_reduce_sum_gradients(self, grads_and_vars):
        # Keras' TensorFlow optimizer sums the gradients over replicas through
        # a `tf.custom_gradient`, which TensorFlow registers in a global table
        # that holds the traced step, and the model's weights captured in it,
        # for the life of the process. With one replica the sum is the
        # gradient itself: skipping it lets every run's step be freed.
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            if tf.distribute.get_strategy().num_replicas_in_sync == 1:
                return list(grads_and_vars)
        return super()._all_reduce_sum_gradients(grads_and_vars)

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        momentum = self.momentums[index]
        gradient = ops.cast(gradient, variable.dtype)
        if self.accumulation_steps == 1:
            new_momentum = self._new_momentum(momentum, gradient, variable, learning_rate)
            self.assign(momentum, new_momentum)
            self.assign_add(variable, new_momentum)
            return
        accumulator = self.accumulators[index]
        total = ops.add(accumulator, gradient)
        new_momentum = self._new_momentum(momentum, ops.divide(total, self.accumulation_steps), variable, learning_rate)
        applies = ops.cast(ops.equal((self._iterations + 1) % self.accumulation_steps, 0), variable.dtype)
        self.assign(momentum, ops.add(ops.multiply(applies, new_momentum), ops.multiply(1 - applies, momentum)))
        self.assign_add(variable, ops.multiply(applies, new_momentum))
        self.assign(accumulator, ops.multiply(1 - applies, total))

    def _new_momentum(self, momentum, step, variable, learning_rate):
        if self.l2:
            step = ops.add(step, ops.multiply(variable, self.l2))
        return ops.subtract(ops.multiply(momentum, self.momentum), ops.multiply(step, ops.cast(learning_rate, variable.dtype)))

    def reset(self):
        """Back to the state before the first update: update 0, no momentum, nothing accumulated."""
        if not self.built:
            return
        for variable in [self._iterations, *self.momentums, *self.accumulators]:
            variable.assign(keras.ops.zeros(variable.shape, variable.dtype))

    def get_config(self):
        return {
            **super().get_config(),
            "momentum": self.momentum,
            "weight_decay": self.l2,
            "accumulation_steps": self.accumulation_steps,
        }
