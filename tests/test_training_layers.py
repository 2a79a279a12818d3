"""training.layers.BatchNorm: the fused training kernel computes what Keras' BatchNormalization does."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from training.layers import BN_MOMENTUM, BatchNorm  # noqa: E402


def _pair(shape, seed: int = 0):
    """A BatchNorm and a Keras BatchNormalization with the same random gamma/beta/moving stats."""
    rng = np.random.default_rng(seed)
    ours, ref = BatchNorm(momentum=BN_MOMENTUM), keras.layers.BatchNormalization(momentum=BN_MOMENTUM)
    ours.build(shape)
    ref.build(shape)
    c = shape[-1]
    weights = [rng.uniform(0.5, 2.0, c), rng.normal(0, 1, c), rng.normal(0, 1, c), rng.uniform(0.5, 2.0, c)]
    ours.set_weights([w.astype(np.float32) for w in weights])
    ref.set_weights([w.astype(np.float32) for w in weights])
    return ours, ref


def _step(layer, x):
    """Output, d(sum(out * w))/d(x, gamma, beta) of one training-mode call, and the moving stats after it."""
    x = tf.constant(x)
    w = tf.constant(np.random.default_rng(9).normal(size=x.shape).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(y * w)
    grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
    return [np.asarray(y)] + [np.asarray(g) for g in grads] + [np.asarray(layer.moving_mean),
                                                                 np.asarray(layer.moving_variance)]


def test_fused_training_step_matches_keras():
    x = np.random.default_rng(1).normal(3.0, 2.0, (4, 6, 5, 3)).astype(np.float32)
    ours, ref = _pair(x.shape)
    names = ["output", "d/dx", "d/dgamma", "d/dbeta", "moving_mean", "moving_variance"]
    for name, a, b in zip(names, _step(ours, x), _step(ref, x)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=name)
    # inference (what evaluation and export see) is Keras' own path
    np.testing.assert_allclose(ours(x, training=False), ref(x, training=False), rtol=1e-5, atol=1e-5)


def test_training_graph_uses_the_fused_kernel_and_the_switch_turns_it_off():
    x = tf.zeros((2, 4, 4, 3))

    def ops_of(layer):
        fn = tf.function(lambda t: layer(t, training=True))
        return {op.type for op in fn.get_concrete_function(x).graph.get_operations()}

    ours, _ = _pair(x.shape)
    assert "FusedBatchNormV3" in ops_of(ours)
    BatchNorm.fused = False
    try:
        ours, _ = _pair(x.shape)
        assert "FusedBatchNormV3" not in ops_of(ours)
    finally:
        BatchNorm.fused = True


def test_inputs_the_kernel_cannot_take_fall_back_to_keras():
    x = np.random.default_rng(2).normal(size=(8, 5)).astype(np.float32)  # 2-D: not NHWC
    ours, ref = _pair(x.shape)
    for a, b in zip(_step(ours, x), _step(ref, x)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_saved_model_loads_back(tmp_path):
    inp = keras.Input((8, 8, 2))
    model = keras.Model(inp, BatchNorm(momentum=BN_MOMENTUM, name="bn")(inp))
    x = np.random.default_rng(3).normal(size=(4, 8, 8, 2)).astype(np.float32)
    model(x, training=True)  # moves the statistics away from their start
    model.save(tmp_path / "m.keras")
    back = keras.models.load_model(tmp_path / "m.keras", compile=False)
    assert isinstance(back.get_layer("bn"), BatchNorm)
    np.testing.assert_allclose(back(x, training=False), model(x, training=False), rtol=1e-6)


def test_autoencoders_and_the_metric_cnn_train_with_it():
    from training import metric_models
    from training.models import FAMILIES, build_model

    models = {f: build_model(f, (16, 16, 1), width=4, depth=2, latent=4) for f in FAMILIES}
    models["metric cnn"] = metric_models.build_model((16, 16, 1), 3, width=4, embed_dim=8)
    for name, model in models.items():
        bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
        assert bns and all(isinstance(layer, BatchNorm) for layer in bns), name
