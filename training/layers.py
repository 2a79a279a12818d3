"""Layers for the model families: the shared batch-norm momentum, and a batch norm that trains fused."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
from keras import layers

# Keras' default 0.99 (MobileNetV2's 0.999) needs ~500 (~5,000) steps before the moving
# statistics forget their start; 2,000 images at batch 32 are 63 steps an epoch, so inference-mode
# outputs lagged training for most of a 10-epoch run (the metric models measured validation
# accuracy 0 with training accuracy 1). 0.9 settles in ~50 steps.
BN_MOMENTUM = 0.9


@keras.saving.register_keras_serializable(package="edge_train")
class BatchNorm(layers.BatchNormalization):
    """BatchNormalization whose training step runs TensorFlow's fused kernel.

    Keras 3 builds batch norm from moments and element-wise ops, each a pass over the activations
    forward and back. At 128x128 px that was 30 % of an autoencoder's training step
    (``bench/train_speed.py --bn keras --bn fused``). The weights, the moving statistics and the
    inference path (what is evaluated and exported) are those of BatchNormalization. Every model
    family uses it; MobileNetV2 has its own batch norms swapped for it (training/metric_models.py).
    """

    # Off: every call takes the Keras path (the benchmark's comparison row).
    fused = True

    def call(self, inputs: Any, training: Any = None, mask: Any = None) -> Any:
        if not (self.fused and training and self.trainable and mask is None and self._fusable(inputs)):
            return super().call(inputs, training=training, mask=mask)
        c = inputs.shape[-1]
        scale = self.gamma if self.scale else tf.ones([c], inputs.dtype)
        offset = self.beta if self.center else tf.zeros([c], inputs.dtype)
        empty = tf.constant([], inputs.dtype)
        y, mean, var, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=scale, offset=offset, mean=empty, variance=empty,
            epsilon=self.epsilon, data_format="NHWC", is_training=True)
        # The kernel returns the Bessel-corrected variance; Keras tracks the biased one.
        n = tf.cast(tf.size(inputs) // c, inputs.dtype)
        var = var * (n - 1.0) / n
        m = self.momentum
        self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
        self.moving_variance.assign(self.moving_variance * m + var * (1.0 - m))
        return y

    def _fusable(self, inputs: Any) -> bool:
        # The kernel normalises the last axis of a 4-D float32 NHWC tensor, nothing else.
        return (keras.backend.backend() == "tensorflow" and len(inputs.shape) == 4
                and self.axis in (-1, 3) and inputs.dtype == tf.float32)
