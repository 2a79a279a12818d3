"""Embedders for the metric-learning family: backbone -> embedding -> L2 norm * alpha -> softmax.

The L2-constrained softmax (Ranjan et al. 2017): the feature vector that feeds the classifier
is normalised and scaled by ``alpha``, so the classes must separate by angle on a sphere, which
makes distances between embeddings meaningful for kNN / LOF.

Two models share every weight: ``classifier`` (trained) and ``embedder`` (exported). The
embedder stops *before* the normalisation by default ("host"): the device normalises in float
on the CPU, which is what keeps the most precision in int8 (see docs/BENCHMARKS.md, Metric
learning). ``l2="graph"`` puts a TFLite L2_NORMALIZATION op in the exported graph instead.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

BACKBONES = ("cnn", "mobilenetv2-0.35", "mobilenetv2-0.5")
L2_PLACES = ("host", "graph")
HEADS = ("gap", "flatten")


_L2_CLASS: Any = None


def _l2_layer(name: str) -> Any:
    """A layer doing tf.math.l2_normalize, which TFLite lowers to one L2_NORMALIZATION op.

    The class is made once, on first use, so importing this module does not import TensorFlow.
    """
    global _L2_CLASS
    if _L2_CLASS is None:
        import keras
        import tensorflow as tf

        @keras.saving.register_keras_serializable(package="edge_detect")
        class L2Normalize(keras.layers.Layer):
            def call(self, x: Any) -> Any:
                return tf.math.l2_normalize(x, axis=-1, epsilon=1e-12)

        _L2_CLASS = L2Normalize
    return _L2_CLASS(name=name)


def _cnn(x: Any, width: int, head: str) -> Any:
    """Small VGG-style CNN: 3 stages of conv-BN-ReLU x2 + maxpool, then global average pooling
    (``head="gap"``) or flatten (``"flatten"``: keeps where things are, RESHAPE in TFLite)."""
    from keras import layers

    from .layers import BN_MOMENTUM, BatchNorm

    for i, w in enumerate((width, width * 2, width * 4)):
        for j in range(2):
            x = layers.Conv2D(w, 3, padding="same", use_bias=False, name=f"conv{i}_{j}")(x)
            x = BatchNorm(momentum=BN_MOMENTUM, name=f"bn{i}_{j}")(x)
            x = layers.ReLU(name=f"relu{i}_{j}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    if head == "flatten":
        return layers.Flatten(name="flatten")(x)
    return layers.GlobalAveragePooling2D(name="gap")(x)


def _mobilenet(x: Any, width: float, weights: Optional[str]) -> Any:
    import keras
    from keras import layers

    from .layers import BN_MOMENTUM, BatchNorm

    shape = tuple(int(d) for d in x.shape[1:])
    if weights == "imagenet" and shape[-1] == 1:
        # ImageNet weights want 3 channels; gray input is repeated rather than re-learning conv1.
        x = layers.Concatenate(name="gray_to_rgb")([x, x, x])
        shape = (*shape[:2], 3)
    # Our inputs are 0..1; MobileNetV2 was trained on -1..1.
    x = layers.Rescaling(2.0, offset=-1.0, name="to_pm1")(x)
    try:
        base = keras.applications.MobileNetV2(input_shape=shape, alpha=width, include_top=False,
                                              weights=weights, pooling="avg")
    except Exception as e:  # Keras raises a bare Exception when the download fails
        if weights != "imagenet":
            raise
        raise ValueError(f"--weights imagenet: could not fetch MobileNetV2's ImageNet weights ({e}); "
                         "Keras downloads them once into ~/.keras/models, which needs internet") from None

    def fused_bn(layer: Any) -> Any:
        # Its 52 batch norms trained with the fused kernel: 1.8x faster per step at 128 px.
        cfg = layer.get_config()
        if isinstance(layer, layers.BatchNormalization):
            return BatchNorm.from_config({**cfg, "momentum": BN_MOMENTUM})
        return layer.__class__.from_config(cfg)

    net = keras.models.clone_model(base, clone_function=fused_bn)
    net.set_weights(base.get_weights())  # the ImageNet weights, when asked for
    return net(x)


def build_model(
    input_shape: Tuple[int, int, int],
    n_classes: int,
    backbone: str = "cnn",
    embed_dim: int = 64,
    alpha: float = 16.0,
    width: int = 32,
    weights: Optional[str] = None,
    batch_size: Optional[int] = None,
    l2: str = "host",
    embedder_only: bool = False,
    head: str = "gap",
) -> Any:
    """The classifier (trained; outputs softmax over ``n_classes``), or with ``embedder_only``
    the exported embedder: (N, embed_dim) before normalisation (l2="host") or unit-length
    (l2="graph"). ``batch_size=1`` gives the static-shape model TFLite export wants; both
    models list their weights in the same order, so ``set_weights`` copies between them.
    """
    import keras
    from keras import layers

    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if l2 not in L2_PLACES:
        raise ValueError(f"l2 must be one of {L2_PLACES}, got {l2!r}")
    if backbone != "cnn" and min(input_shape[:2]) < 32:
        raise ValueError(f"MobileNetV2 needs inputs of at least 32x32 px, got {input_shape[:2]}")
    inp = keras.Input(input_shape, batch_size=batch_size, name="image")
    if backbone == "cnn":
        f = _cnn(inp, width, head)
    else:
        f = _mobilenet(inp, float(backbone.rsplit("-", 1)[1]), weights)
    emb = layers.Dense(embed_dim, name="embedding")(f)
    if embedder_only and l2 == "host":
        return keras.Model(inp, emb, name="embedder")
    unit = _l2_layer("l2norm")(emb)
    if embedder_only:
        return keras.Model(inp, unit, name="embedder")
    scaled = layers.Rescaling(alpha, name="alpha")(unit)
    out = layers.Dense(n_classes, activation="softmax", name="classifier")(scaled)
    return keras.Model(inp, out, name="l2_softmax")


def embedder_of(classifier: Any, l2: str = "host") -> Any:
    """The embedder sub-model of a trained classifier (same layers, same weights)."""
    import keras

    layer = classifier.get_layer("embedding" if l2 == "host" else "l2norm")
    return keras.Model(classifier.inputs, layer.output, name="embedder")
