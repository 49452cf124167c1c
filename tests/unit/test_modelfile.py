"""`.keras` files load as tf-keras loads them, from an extracted weights file (tf-keras' in-archive read is slow)."""

from __future__ import annotations

import numpy as np


def _saved(tmp_path, model, name):
    from edgecls.run import sha256_file

    path = tmp_path / f"{name}.keras"
    model.save(path)
    return path, sha256_file(path)


def test_a_model_loads_with_the_weights_and_outputs_tf_keras_gives(tmp_path):
    """A fine-tuned stage's file (`model.keras`; the optimize stages write `.h5`, which tf-keras reads directly)."""
    import tf_keras

    from edgecls.modelfile import load_keras_model

    base = tf_keras.applications.MobileNet((32, 32, 3), alpha=0.25, include_top=False, weights=None, pooling="avg")
    model = tf_keras.Model(base.input, tf_keras.layers.Dense(3, activation="softmax")(base.output))
    images = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(images, np.arange(4) % 3, epochs=1, verbose=0)  # BatchNorm statistics and weights move off their start
    path, sha = _saved(tmp_path, model, "model")
    reference = tf_keras.models.load_model(str(path), compile=False)
    loaded = load_keras_model(path, sha256=sha)
    assert [w.name for w in loaded.weights] == [w.name for w in reference.weights]
    assert all(np.array_equal(a, b) for a, b in zip(loaded.get_weights(), reference.get_weights(), strict=True))
    assert np.array_equal(loaded(images).numpy(), reference(images).numpy())
    assert loaded.get_config() == reference.get_config()
