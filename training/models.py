"""Convolutional autoencoders, built only from ops that quantise to int8 and map to the Edge TPU.

Every family maps an image in 0..1 to its reconstruction (sigmoid output, same shape):

- ``plain``:     hourglass: (Conv+BN+ReLU, MaxPool) x depth, 1x1 latent, (nearest resize, Conv) x depth
- ``denoising``: the same network; noise is added to its *input* by the data pipeline only
  (``--noise synthetic``: defects pasted on by :mod:`training.synthetic`, which the network learns to remove)
- ``superres``:  AveragePool by ``k`` inside the graph, then the hourglass restores full size
- ``dilated``:   a shallower hourglass whose bottleneck is a stack of growing-dilation convs,
                 trained with SSIM + L1

``skips`` (0 = none) adds U-Net skip connections (CONCATENATION) to the ``skips`` deepest decoder
levels. A skip lets fine normal detail through the bottleneck, so normal images reconstruct
sharply; it only makes sense with a denoising target that teaches the network *not* to copy
defects (``--noise synthetic``), else the network learns the identity.

Upsampling is ``Resizing(interpolation="nearest")`` (RESIZE_NEAREST_NEIGHBOR) because
``UpSampling2D`` lowers to RESHAPE+TILE, which the Edge TPU cannot run.
"""

from __future__ import annotations

from typing import Optional, Tuple

import keras
from keras import layers

from .layers import BN_MOMENTUM, BatchNorm

FAMILIES = ("plain", "denoising", "superres", "dilated")
DEFAULTS = {"width": 16, "depth": 3, "latent": 16, "k": 2, "dilations": (1, 2, 4), "skips": 0}


def _conv(x, filters: int, dilation: int = 1, name: str = ""):
    x = layers.Conv2D(filters, 3, padding="same", dilation_rate=dilation, use_bias=False, name=f"{name}_conv")(x)
    x = BatchNorm(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _up(x, size: Tuple[int, int], name: str):
    return layers.Resizing(size[0], size[1], interpolation="nearest", name=name)(x)


def build_model(
    family: str,
    input_shape: Tuple[int, int, int],
    batch_size: Optional[int] = None,
    width: int = DEFAULTS["width"],
    depth: int = DEFAULTS["depth"],
    latent: int = DEFAULTS["latent"],
    k: int = DEFAULTS["k"],
    dilations: Tuple[int, ...] = DEFAULTS["dilations"],
    skips: int = DEFAULTS["skips"],
) -> keras.Model:
    """An autoencoder of ``family`` for (H, W, C) inputs of any size (pooling pads; resizes restore sizes).

    width: filters of the first level, doubled per level; latent: channels at the bottleneck;
    skips: number of decoder levels, deepest first, that also see their encoder level.
    batch_size: fixed batch (1 for TFLite export) or None for training.
    """
    if family not in FAMILIES:
        raise ValueError(f"model must be one of {FAMILIES}, got {family!r}")
    h, w, c = input_shape
    if family == "dilated":
        depth = min(depth, 2)  # the dilated stack supplies the receptive field the lost levels would have
    if not 0 <= skips <= depth:
        raise ValueError(f"skips must be in 0..{depth} (the depth), got {skips}")
    if min(h, w) < 2**depth * (k if family == "superres" else 1):
        raise ValueError(f"input size {h}x{w} px is too small for {family} with depth {depth}")

    inp = keras.Input(input_shape, batch_size=batch_size, name="image")
    x = layers.AveragePooling2D(k, padding="same", name="downsample")(inp) if family == "superres" else inp
    sizes, feats = [], []
    for i in range(depth):
        sizes.append((x.shape[1], x.shape[2]))
        x = _conv(x, width * 2**i, name=f"enc{i}")
        feats.append(x)
        x = layers.MaxPooling2D(2, padding="same", name=f"pool{i}")(x)
    if family == "dilated":
        for j, d in enumerate(dilations):
            x = _conv(x, width * 2**depth, dilation=d, name=f"dil{j}")
    x = layers.Conv2D(latent, 1, activation="relu", name="latent")(x)
    for i in reversed(range(depth)):
        x = _up(x, sizes[i], name=f"up{i}")
        if i >= depth - skips:
            x = layers.Concatenate(name=f"skip{i}")([x, feats[i]])
        x = _conv(x, width * 2**i, name=f"dec{i}")
    if family == "superres":
        x = _up(x, (h, w), name="restore")
        x = _conv(x, width, name="restore")
    out = layers.Conv2D(c, 3, padding="same", activation="sigmoid", name="reconstruction")(x)
    return keras.Model(inp, out, name=f"{family}_ae")


def ssim_l1_loss(alpha: float = 0.84):
    """(1 - SSIM) * alpha + L1 * (1 - alpha): structure-aware loss for the dilated family."""
    import tensorflow as tf

    def loss(y_true, y_pred):
        win = min(11, int(y_true.shape[1]), int(y_true.shape[2]))
        ssim = tf.image.ssim(y_true, y_pred, max_val=1.0, filter_size=win)
        l1 = tf.reduce_mean(tf.abs(y_true - y_pred), axis=[1, 2, 3])
        return alpha * (1.0 - ssim) + (1.0 - alpha) * l1

    return loss


LOSSES = ("mae", "mse", "ssim_l1")


def loss_name(family: str, loss: Optional[str] = None) -> str:
    """``loss`` if given, else the family's default: SSIM + L1 for dilated, MAE otherwise."""
    return loss or ("ssim_l1" if family == "dilated" else "mae")


def loss_for(family: str, loss: Optional[str] = None):
    """The Keras loss for ``family`` (see :func:`loss_name`)."""
    loss = loss_name(family, loss)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    return ssim_l1_loss() if loss == "ssim_l1" else loss
