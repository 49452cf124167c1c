"""BatchNorm statistics re-estimated on training images after training ("precise BN")."""

from __future__ import annotations

import numpy as np
import tf_keras


def reestimate_batchnorm(model, images: np.ndarray, *, mode: str, batch_size: int = 64) -> int:
    """Replace every BatchNorm layer's moving mean and variance by the average of its batch statistics on `images`.

    The weights stay as trained; each batch runs in training mode with the momentum set so that the
    moving averages become the running mean over the batches seen ("precise BN"). A layer's momentum
    is restored afterwards. `images` must come in random order: batches of one class understate the
    variance (measured on MobileNetV2: 0.9066 test accuracy from class-sorted batches, 0.9160 shuffled).

    Returns:
        The number of images used (whole batches only).
    """
    from edgecls.data.pipeline import preprocess_numpy

    layers = [layer for layer in model.layers if isinstance(layer, tf_keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    batches = len(images) // batch_size
    for index in range(batches):
        for layer in layers:
            layer.momentum = index / (index + 1)  # 0 first: the first batch's statistics replace the old ones
        model(preprocess_numpy(images[index * batch_size : (index + 1) * batch_size], mode), training=True)
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
    return batches * batch_size
